"""JSON Web Keys for our Ed25519 keys, pure: a key's id (its RFC 7638 thumbprint), its
public JWK, and a JWKS document read back into keys."""

import base64
import hashlib
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def kid_of(key: Ed25519PublicKey) -> str:
    """RFC 7638: the SHA-256 of the key's required members, in order, without spaces. The
    same key always has the same id, whoever computes it."""
    required = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(_raw(key))}
    return _b64url(hashlib.sha256(orjson.dumps(required, option=orjson.OPT_SORT_KEYS)).digest())


def public_jwk(key: Ed25519PublicKey, kid: str | None = None) -> dict[str, str]:
    return {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": _b64url(_raw(key)),
        "kid": kid or kid_of(key),
        "use": "sig",
        "alg": "EdDSA",
    }


def document(keys: dict[str, Ed25519PublicKey]) -> dict[str, Any]:
    """A JWKS document of `keys` (by kid)."""
    return {"keys": [public_jwk(key, kid) for kid, key in keys.items()]}


def read_keys(data: bytes) -> dict[str, Ed25519PublicKey]:
    """The keys of a JWKS document (by kid), or of one PEM public key; ValueError for
    anything else. Keys of other types are skipped (a set may hold more than ours)."""
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return {kid_of(key): key}
    try:
        entries = orjson.loads(data)["keys"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a JWKS document ({exc})") from exc
    keys: dict[str, Ed25519PublicKey] = {}
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or entry.get("kty") != "OKP"
            or entry.get("crv") != "Ed25519"
        ):
            continue
        raw = base64.urlsafe_b64decode(str(entry["x"]) + "==")
        key = Ed25519PublicKey.from_public_bytes(raw)
        # Ours are thumbprints; an identity provider's may be any string.
        keys[str(entry.get("kid") or kid_of(key))] = key
    if not keys:
        raise ValueError("no Ed25519 key in the JWKS document")
    return keys
