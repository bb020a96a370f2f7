"""Test helpers: tokens forged the ways attackers try (HS256 keyed with the public key)."""

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

from schemas.auth import JWT_AUDIENCE, JWT_ISSUER


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "sub": "drv-x", "role": "driver", "iat": now, "exp": now + 60,
        "aud": JWT_AUDIENCE, "iss": JWT_ISSUER,
    }  # fmt: skip
    return base | changes


def hs256_with_public_key(public_key: Path, kid: str | None = None, **changes: Any) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the server's public key
    (naming the key `kid` when given)."""
    head: dict[str, str] = {"alg": "HS256", "typ": "JWT"} | ({"kid": kid} if kid else {})
    header = b64url(json.dumps(head).encode())
    payload = b64url(json.dumps(claims(**changes)).encode())
    mac = hmac.new(public_key.read_bytes(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64url(mac.digest())}"
