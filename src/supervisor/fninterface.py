"""The io.sjob.Functions Varlink interface sjobd serves beside io.sjob.Jobs, on the same socket and for the same
connection's principal: `varlinkctl introspect /run/sjob/io.sjob.Jobs io.sjob.Functions`. One method per request,
each passed to the function service (functions.py); its errors are `io.sjob.Functions.<code>`.

A call is a job: `Call` returns it once started, and the caller follows it through io.sjob.Jobs (FollowPipe),
as `sjob run` does. Its stdin comes as a passed file descriptor, checked like a job's (stdio.py).

No `from __future__ import annotations`: asyncvarlink derives the interface from runtime annotations.
"""

from asyncvarlink import FileDescriptor, VarlinkInterface, varlinkmethod

from supervisor import stdio
from supervisor.auth import Principal
from supervisor.fnprotocol import INTERFACE, Deployed, Function, FunctionCall, FunctionSettings, FunctionVersion
from supervisor.functions import FunctionService
from supervisor.interface import answering, error_classes
from supervisor.protocol import Job

ERRORS = error_classes(INTERFACE)
answers = answering(ERRORS)


class FunctionsInterface(VarlinkInterface, name=INTERFACE):
    """Deploy Python code as named functions, and call them with your stdin streamed in and their output out."""

    errors = tuple(ERRORS.values())

    def __init__(self, service: FunctionService, principal: Principal, socket_path: str = "") -> None:
        self._service = service
        self._principal = principal
        self._socket_path = socket_path

    def authenticated_as(self, principal: Principal) -> None:
        """The connection presented a token (io.sjob.Jobs.Authenticate): act as its principal from now on."""
        self._principal = principal

    @varlinkmethod(return_parameter="deployed")
    @answers
    async def Deploy(  # noqa: N802 - Varlink method names are CamelCase
        self, name: str, code: str, requirements: str | None = None, settings: FunctionSettings | None = None
    ) -> Deployed:
        """Make `code` (Python source; `requirements`: a pip requirements file) the next version of the function
        `name`, once a build job has compiled it (and installed its requirements); a build that fails changes
        nothing. `settings` change the function's description, callers, limits and concurrency."""
        return await self._service.deploy(self._principal, name, code, requirements, settings or FunctionSettings())

    @varlinkmethod(return_parameter="functions")
    @answers
    def List(self) -> list[Function]:  # noqa: N802
        """The functions the caller may call or owns."""
        return self._service.list_functions(self._principal)

    @varlinkmethod(return_parameter="function")
    @answers
    def Show(self, name: str) -> Function:  # noqa: N802
        """One function."""
        return self._service.show(self._principal, name)

    @varlinkmethod(return_parameter="versions")
    @answers
    def Versions(self, name: str) -> list[FunctionVersion]:  # noqa: N802
        """A function's versions, newest first."""
        return self._service.versions(self._principal, name)

    @varlinkmethod(return_parameter="function")
    @answers
    def Rollback(self, name: str, version: int) -> Function:  # noqa: N802
        """Make an earlier `version` the one calls get (calls running keep theirs)."""
        return self._service.rollback(self._principal, name, version)

    @varlinkmethod
    @answers
    async def Remove(self, name: str, force: bool = False) -> None:  # noqa: N802
        """Remove a function and all its versions; refused while calls run, unless `force` stops them."""
        await self._service.remove(self._principal, name, force=force)

    @varlinkmethod(return_parameter="job")
    @answers
    async def Call(  # noqa: N802
        self, name: str, args: list[str] | None = None, stdin: FileDescriptor | None = None
    ) -> Job:
        """Call the function `name` (or `name@VERSION`) with `args`; `stdin`, a pipe, is what it reads. Returns the
        call's job once it runs: follow it with io.sjob.Jobs.FollowPipe."""
        fd = stdin.fileno() if stdin else None
        kind = stdio.check_stdin(fd, self._socket_path) if fd is not None else None
        return await self._service.call(self._principal, name, args or [], fd if kind else None, kind)

    @varlinkmethod(return_parameter="calls")
    @answers
    def Calls(self, name: str, limit: int = 100) -> list[FunctionCall]:  # noqa: N802
        """A function's calls, newest first: all of them for its owner, one's own for other callers."""
        return self._service.calls(self._principal, name, limit)
