"""Tokens: JWTs (PyJWT) for principals the kernel cannot name, such as CI runners behind a forwarded socket.

- Signed with Ed25519 (JWS alg EdDSA) keys kept in sjobd's state directory (/var/lib/sjob/keys/<kid>.pem, root
  only). The newest key signs; every key there verifies, so a key is rotated by adding a new one (`sjobd
  --new-key`) and removing the old once its tokens have expired.
- Verification accepts exactly one algorithm and needs the header's `kid` to name a key sjobd holds; it requires
  exp, iat, aud, iss, sub and jti, refuses a lifetime (exp - iat) above the policy's maximum, and refuses a jti
  sjobd did not issue or has revoked (so losing tokens.sqlite revokes every token: fail closed).
- A token is checked before it is parsed for size, and never logged; audit entries carry its jti.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import secrets
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from supervisor.policy import RULE_ACTIONS
from supervisor.statedb import open_state_db

ALGORITHM = "EdDSA"
ISSUER = "sjobd"
AUDIENCE = "io.sjob.Jobs"
MAX_TOKEN_BYTES = 8192
LEEWAY_SECONDS = 0  # no clock skew to allow for: sjobd checks tokens against the clock it issued them by
REQUIRED = ["exp", "iat", "aud", "iss", "sub", "jti"]
SUBJECT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
_KID = re.compile(r"[a-z0-9-]{1,64}")


class TokenError(Exception):
    """A token was refused; the message says why (and never contains the token)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    subject: str
    token_id: str
    scope: frozenset[str]
    issued_usec: int
    expires_usec: int


@dataclasses.dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    subject: str
    scope: tuple[str, ...]
    issued_by: str
    issued_usec: int
    expires_usec: int
    revoked_usec: int | None = None
    revoked_by: str | None = None


class Keys:
    """The signing keys in one directory: <kid>.pem, PKCS#8 Ed25519, mode 0600."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._private: dict[str, Ed25519PrivateKey] = {}
        for path in sorted(directory.glob("*.pem")):
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if isinstance(key, Ed25519PrivateKey) and _KID.fullmatch(path.stem):
                self._private[path.stem] = key

    @staticmethod
    def create(directory: Path) -> str:
        """Make a new signing key (it signs from now on); returns its key id."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        kid = f"{datetime.datetime.now(datetime.UTC):%Y%m%d%H%M%S}-{secrets.token_hex(4)}"
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(directory / f"{kid}.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return kid

    @property
    def signing_kid(self) -> str | None:
        return max(self._private, default=None)  # key ids start with their creation time

    def public(self, kid: object) -> Ed25519PublicKey | None:
        key = self._private.get(kid) if isinstance(kid, str) else None
        return key.public_key() if key is not None else None

    def sign(self, payload: dict[str, object]) -> str:
        kid = self.signing_kid
        if kid is None:
            raise TokenError(f"sjobd has no signing key in {self.directory}; create one with 'sjobd --new-key'")
        return jwt.encode(payload, self._private[kid], algorithm=ALGORITHM, headers={"kid": kid})


def issue(keys: Keys, subject: str, scope: frozenset[str], ttl_usec: int, now_usec: int) -> tuple[str, Claims]:
    if not SUBJECT.fullmatch(subject):
        raise TokenError(f"subject {subject[:40]!r} is not a valid name (letters, digits, '_', '.', '@', '-')")
    if not scope or not scope <= RULE_ACTIONS:
        raise TokenError(f"scope must be one or more of: {', '.join(sorted(RULE_ACTIONS))}")
    iat = now_usec // 1_000_000
    exp = (now_usec + ttl_usec) // 1_000_000
    claims = Claims(subject, secrets.token_hex(16), scope, iat * 1_000_000, exp * 1_000_000)
    payload: dict[str, object] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": subject,
        "jti": claims.token_id,
        "iat": iat,
        "exp": exp,
        "scope": " ".join(sorted(scope)),
    }
    return keys.sign(payload), claims


def verify(keys: Keys, token: str, max_ttl_usec: int, now_usec: int) -> Claims:
    """The token's claims if its signature, algorithm, key, audience, issuer, times and scope are all right."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(f"token is longer than {MAX_TOKEN_BYTES} bytes")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise TokenError("not a token (expected a JWT: three base64url parts separated by dots)") from None
    if header.get("alg") != ALGORITHM:
        raise TokenError(f"token algorithm {str(header.get('alg'))[:20]!r} refused: sjob tokens are {ALGORITHM}")
    key = keys.public(header.get("kid"))
    if key is None:
        raise TokenError(f"token signed with unknown key id {str(header.get('kid'))[:40]!r}")
    try:
        payload = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=AUDIENCE,
            issuer=ISSUER,
            leeway=LEEWAY_SECONDS,
            options={"require": REQUIRED, "verify_signature": True},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("token has expired") from None
    except jwt.MissingRequiredClaimError as e:
        raise TokenError(f"token lacks the {e.claim!r} claim") from None
    except jwt.InvalidAudienceError:
        raise TokenError(f"token is not for sjobd (aud must be {AUDIENCE!r})") from None
    except jwt.InvalidIssuerError:
        raise TokenError(f"token was not issued by sjobd (iss must be {ISSUER!r})") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("token is issued in the future (iat); check the clocks") from None
    except jwt.InvalidSignatureError:
        raise TokenError("token signature does not verify") from None
    except jwt.InvalidTokenError as e:
        raise TokenError(f"invalid token ({type(e).__name__})") from None
    iat, exp = payload["iat"], payload["exp"]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
        raise TokenError("token iat and exp must be whole seconds")
    if (exp - iat) * 1_000_000 > max_ttl_usec:
        raise TokenError(f"token lifetime {exp - iat}s exceeds the maximum of {max_ttl_usec // 1_000_000}s")
    subject, token_id, scope = payload["sub"], payload["jti"], payload.get("scope", "")
    if not isinstance(subject, str) or not SUBJECT.fullmatch(subject):
        raise TokenError("token subject is not a valid name")
    if not isinstance(token_id, str) or not 1 <= len(token_id) <= 64:
        raise TokenError("token id (jti) is not valid")
    actions = frozenset(scope.split()) if isinstance(scope, str) else frozenset({"?"})
    if not actions <= RULE_ACTIONS:
        raise TokenError("token scope names unknown actions")
    return Claims(subject, token_id, actions, iat * 1_000_000, exp * 1_000_000)


class TokenStore:
    """Every token sjobd issued, and which are revoked: tokens.sqlite in the state directory."""

    def __init__(self, path: Path) -> None:
        self._db = open_state_db(path, "every token issued before is refused (fail closed): issue new ones")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tokens (token_id TEXT PRIMARY KEY, subject TEXT NOT NULL, scope TEXT NOT NULL,"
            " issued_by TEXT NOT NULL, issued_usec INTEGER NOT NULL, expires_usec INTEGER NOT NULL,"
            " revoked_usec INTEGER, revoked_by TEXT)"
        )

    def add(self, record: TokenRecord) -> None:
        self._db.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*dataclasses.astuple(record)[:2], " ".join(record.scope), *dataclasses.astuple(record)[3:]),
        )

    def get(self, token_id: str) -> TokenRecord | None:
        row = self._db.execute("SELECT * FROM tokens WHERE token_id = ?", (token_id,)).fetchone()
        return _record(row) if row else None

    def list(self) -> list[TokenRecord]:
        return [_record(r) for r in self._db.execute("SELECT * FROM tokens ORDER BY issued_usec DESC")]

    def revoke(self, token_id: str, by: str, now_usec: int) -> TokenRecord | None:
        self._db.execute(
            "UPDATE tokens SET revoked_usec = ?, revoked_by = ? WHERE token_id = ? AND revoked_usec IS NULL",
            (now_usec, by, token_id),
        )
        return self.get(token_id)

    def close(self) -> None:
        self._db.close()


def _record(row: tuple[object, ...]) -> TokenRecord:
    token_id, subject, scope, issued_by, issued, expires, revoked, revoked_by = row
    return TokenRecord(
        str(token_id),
        str(subject),
        tuple(str(scope).split()),
        str(issued_by),
        int(issued),  # type: ignore[call-overload]
        int(expires),  # type: ignore[call-overload]
        int(revoked) if revoked is not None else None,  # type: ignore[call-overload]
        str(revoked_by) if revoked_by is not None else None,
    )
