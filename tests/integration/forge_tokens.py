"""Print, as JSON, one token per attack of issue D, made with what an attacker may have: a real token (to tamper
with or replay), the public key, and, to sign claims sjobd must still refuse, the real signing key (run as root).

Run with sjob's own interpreter (/opt/sjob/bin/python), which has PyJWT: forge_tokens.py KEYS_DIR REAL REVOKED
"""

import base64
import hashlib
import hmac
import json
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main() -> None:
    keys_dir, real, revoked = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    kid = max(p.stem for p in keys_dir.glob("*.pem"))
    key = serialization.load_pem_private_key((keys_dir / f"{kid}.pem").read_bytes(), None)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = jwt.decode(real, options={"verify_signature": False})
    now = int(time.time())

    def signed(**over: object) -> str:
        payload = {**claims, **over}
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, key, algorithm="EdDSA", headers={"kid": kid})  # type: ignore[arg-type]

    def unsigned(header: dict[str, object], signature: bytes | None) -> str:
        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        if signature is None:
            return signing_input + "."
        return f"{signing_input}.{b64(hmac.new(public, signing_input.encode(), hashlib.sha256).digest())}"

    attacks = {
        "alg none": (unsigned({"alg": "none", "kid": kid}, None), "algorithm 'none' refused"),
        "HS256 signed with the public key": (unsigned({"alg": "HS256", "kid": kid}, b""), "algorithm 'HS256' refused"),
        "expired": (signed(iat=now - 7200, exp=now - 3600), "token has expired"),
        "missing exp": (signed(exp=None), "lacks the 'exp' claim"),
        "exp beyond the maximum TTL": (signed(exp=now + 400 * 86400), "exceeds the maximum"),
        "wrong aud": (signed(aud="someone-else"), "not for sjobd"),
        "wrong iss": (signed(iss="mallory"), "not issued by sjobd"),
        "unknown kid": (jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": "x" + kid}), "unknown key id"),  # type: ignore[arg-type]
        "revoked jti": (revoked, "was revoked"),
        "a 1 MB token": ("e" * 1_000_000, "longer than 8192 bytes"),
        "tampered payload": (
            real.split(".")[0] + "." + b64(json.dumps({**claims, "sub": "root"}).encode()) + "." + real.split(".")[2],
            "signature does not verify",
        ),
    }
    json.dump(attacks, sys.stdout)


main()
