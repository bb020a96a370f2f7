"""JSON Web Keys, pure: our Ed25519 keys' ids (RFC 7638 thumbprints) and public JWKs, and a
JWKS document read back into verifying keys: ours, or an identity provider's (RSA or EC
P-256 keys, RS256 and ES256). Each key verifies with the one algorithm its type implies:
never the token's say (no "none", no HMAC keyed with a public key)."""

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

# What a verifier accepts, by key type: Ed25519 (ours), RSA, EC P-256.
ALGORITHMS = frozenset({"EdDSA", "RS256", "ES256"})


class UnknownKey(Exception):
    """The token names a key id the key set does not hold (retired, or never ours)."""


@dataclass(frozen=True)
class VerifyingKey:
    """A public key and the one algorithm tokens signed by it use."""

    key: Any
    algorithm: str


def pick(
    current: Callable[[], dict[str, VerifyingKey]], kid: str | None, on_miss: Callable[[], None]
) -> list[VerifyingKey]:
    """The key `kid` names among `current()`'s, after `on_miss` (a look for new keys) when
    it is not there; UnknownKey if still not. Without a kid (a token from before key ids),
    every key."""
    keys = current()
    if kid is None:
        return list(keys.values())
    if kid not in keys:
        on_miss()
        keys = current()
    if kid not in keys:
        raise UnknownKey(f"unknown key id {kid!r}")
    return [keys[kid]]


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


def document(keys: dict[str, VerifyingKey]) -> dict[str, Any]:
    """A JWKS document of `keys` (by kid)."""
    entries = []
    for kid, verifying in keys.items():
        if isinstance(verifying.key, Ed25519PublicKey):
            entries.append(public_jwk(verifying.key, kid))
            continue
        algorithm = jwt.algorithms.get_default_algorithms()[verifying.algorithm]
        jwk = orjson.loads(algorithm.to_jwk(verifying.key))
        entries.append(jwk | {"kid": kid, "use": "sig", "alg": verifying.algorithm})
    return {"keys": entries}


def read_keys(data: bytes) -> dict[str, VerifyingKey]:
    """The keys of a JWKS document (by kid), or of one Ed25519 PEM public key; ValueError
    for anything else. Keys for other uses or algorithms (HMAC secrets) are skipped."""
    if data.lstrip().startswith(b"-----BEGIN"):
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError("not an Ed25519 public key")
        return {kid_of(key): VerifyingKey(key, "EdDSA")}
    try:
        entries = orjson.loads(data)["keys"]
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"not a JWKS document ({exc})") from exc
    keys: dict[str, VerifyingKey] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue  # a type or curve we do not verify with
        if parsed.algorithm_name not in ALGORITHMS:
            continue
        key = parsed.key
        # Ours are thumbprints; an identity provider's may be any string.
        kid = str(entry.get("kid") or (kid_of(key) if isinstance(key, Ed25519PublicKey) else ""))
        if kid:
            keys[kid] = VerifyingKey(key, parsed.algorithm_name)
    if not keys:
        raise ValueError("no key to verify with in the JWKS document")
    return keys
