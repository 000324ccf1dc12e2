"""The client side of io.sjob.Functions: `Client` with the functions' methods, for `sjob fn` only.

Apart from `client` so that every other verb's start-up skips importing the functions' protocol types."""

from __future__ import annotations

from supervisor.client import Client, reply_list
from supervisor.fnprotocol import Deployed, Function, FunctionCall, FunctionSettings, FunctionVersion
from supervisor.fnprotocol import Method as FnMethod
from supervisor.protocol import Job, from_wire, to_wire

TYPE_CHECKING = False  # not typing's: importing typing costs every sjob call start-up time
if TYPE_CHECKING:
    from typing import Any


class FunctionClient(Client):
    """A connection to sjobd that also speaks io.sjob.Functions (same socket, same framing)."""

    def deploy(self, name: str, code: str, requirements: str | None, settings: FunctionSettings) -> Deployed:
        parameters: dict[str, Any] = {"name": name, "code": code, "settings": to_wire(settings)}
        if requirements is not None:
            parameters["requirements"] = requirements
        return from_wire(Deployed, self.call(FnMethod.Deploy, parameters)["deployed"])

    def functions(self) -> list[Function]:
        return [from_wire(Function, f) for f in reply_list(self.call(FnMethod.List, {}), "functions")]

    def function(self, name: str) -> Function:
        return from_wire(Function, self.call(FnMethod.Show, {"name": name})["function"])

    def versions(self, name: str) -> list[FunctionVersion]:
        versions = reply_list(self.call(FnMethod.Versions, {"name": name}), "versions")
        return [from_wire(FunctionVersion, v) for v in versions]

    def rollback(self, name: str, version: int) -> Function:
        return from_wire(Function, self.call(FnMethod.Rollback, {"name": name, "version": version})["function"])

    def remove_function(self, name: str, *, force: bool = False) -> None:
        self.call(FnMethod.Remove, {"name": name, "force": force})

    def call_function(self, reference: str, args: list[str], *, stdin: int | None = None) -> Job:
        """Start a call of `reference` (NAME or NAME@VERSION); `stdin` is copied into it. Follow the job it returns."""
        parameters: dict[str, Any] = {"name": reference, "args": args}
        if stdin is not None:
            parameters["stdin"] = 0
            self._check_passing([stdin])
        return from_wire(Job, self.call(FnMethod.Call, parameters, [stdin] if stdin is not None else None)["job"])

    def function_calls(self, name: str, limit: int = 100) -> list[FunctionCall]:
        calls = reply_list(self.call(FnMethod.Calls, {"name": name, "limit": limit}), "calls")
        return [from_wire(FunctionCall, c) for c in calls]
