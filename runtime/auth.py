"""JWT: Ed25519-signed tokens. Services verify with the public key; only tooling signs."""

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.clock import Clock, SystemClock
from runtime.jwks import UnknownKey, VerifyingKey, kid_of, pick, read_keys
from runtime.remote_keys import RemoteKeySet
from runtime.settings import HttpServiceSettings
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Principal, Role

log = logging.getLogger(__name__)

# The algorithm is never taken from the token header ("alg: none", HS256 signed with the
# public key as a secret, and so on are all refused): each key verifies with its own
# (runtime/jwks.py).
REQUIRED_CLAIMS = ["exp", "iat", "aud", "iss", "sub"]


class AuthError(Exception):
    """The token is missing, malformed, expired or not ours (HTTP 401)."""


class ForbiddenError(Exception):
    """The token is valid but its role may not do this (HTTP 403)."""


class KeySource(Protocol):
    """Where a verifier's keys come from: a file (`KeySet`) or an identity provider's URL
    (runtime/remote_keys.py `RemoteKeySet`)."""

    def current(self) -> dict[str, VerifyingKey]: ...

    def candidates(self, kid: str | None) -> list[VerifyingKey]:
        """The key `kid` names (UnknownKey if none); without a kid, every key."""
        ...


class KeySet:
    """The public keys tokens are verified with, from a file: a JWKS document (or one PEM
    key). The file is looked at again at most every `recheck_s`, and at once for a key id
    it does not hold: services pick up `telemetry keys rotate` and `retire` without a
    restart. A file that cannot be read keeps the keys read before (and says so in the
    log); the first read must succeed (a service that cannot verify refuses to start)."""

    def __init__(self, path: Path, clock: Clock, recheck_s: float = 1.0) -> None:
        self._path = path
        self._clock = clock
        self._recheck_s = recheck_s
        self._stamp = self._stat()
        self._keys = read_keys(path.read_bytes())
        self._checked = clock.monotonic()

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self._path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_ino

    def _refresh(self) -> None:
        self._checked = self._clock.monotonic()
        stamp = self._stat()
        if stamp is None or stamp == self._stamp:
            return
        try:
            self._keys = read_keys(self._path.read_bytes())
        except (OSError, ValueError) as exc:
            log.error(
                "the keys in %s could not be read, the previous ones stay: %s", self._path, exc
            )
            return
        self._stamp = stamp
        log.info("keys read again from %s: %s", self._path, ", ".join(self._keys))

    def current(self) -> dict[str, VerifyingKey]:
        if self._clock.monotonic() - self._checked >= self._recheck_s:
            self._refresh()
        return self._keys

    def candidates(self, kid: str | None) -> list[VerifyingKey]:
        # Not held: the file again at once (a key added a moment ago).
        return pick(self.current, kid, self._refresh)


class TokenVerifier:
    """Verifies tokens, remembering the ones it verified: a driver app sends the same token
    with every ping, and the signature check is most of the cost of a small request. The
    cache is keyed by the whole token (signature included), bounded, and an entry never
    outlives its token's `exp`."""

    def __init__(
        self,
        keys: KeySource,
        *,
        audience: str,
        issuer: str,
        max_lifetime_s: int = 24 * 3600,
        leeway_s: int = 30,
        cache_size: int = 100_000,
        clock: Clock | None = None,
        role_claim: str = "role",
        role_map: Mapping[str, Role] | None = None,
    ) -> None:
        self._keys = keys
        self._role_claim = role_claim.split(".")
        self._role_map = dict(role_map or {})
        self._audience = audience
        self._issuer = issuer
        self._max_lifetime_s = max_lifetime_s
        self._leeway_s = leeway_s
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock or SystemClock()

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> "TokenVerifier":
        """Verifying with the keys of `path` (a JWKS document or one PEM public key), read
        again when it changes."""
        return cls(KeySet(path, kwargs.get("clock") or SystemClock()), **kwargs)

    @property
    def keys(self) -> KeySource:
        return self._keys

    def verify(self, token: str) -> Principal:
        return self.verify_expiring(token)[0]

    def verify_expiring(self, token: str) -> tuple[Principal, float]:
        """The principal and when its token expires (epoch seconds): a connection that
        outlives its token ends then."""
        cached = self._cache.get(token)
        if cached is not None:
            if self._clock.wall() < cached[1]:
                self._cache.move_to_end(token)
                return cached
            del self._cache[token]
            raise AuthError("invalid token: Signature has expired")
        verified = self._verify(token)
        self._cache[token] = verified
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return verified

    def _verify(self, token: str) -> tuple[Principal, float]:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            claims = self._decode(
                token, self._keys.candidates(kid if isinstance(kid, str) else None)
            )
            principal = Principal(sub=str(claims["sub"]), role=self._role(claims))
            lifetime = float(claims["exp"]) - float(claims["iat"])
        except (jwt.PyJWTError, KeyError, ValueError, TypeError, UnknownKey) as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        # A stolen long-lived token is a long-lived breach: refuse what no issuer of ours
        # would sign, and an iat in the future beyond the leeway (PyJWT checks nbf).
        if lifetime > self._max_lifetime_s:
            raise AuthError(f"invalid token: lifetime {lifetime:.0f} s exceeds the maximum")
        if float(claims["iat"]) > self._clock.wall() + self._leeway_s:
            raise AuthError("invalid token: issued in the future")
        return principal, float(claims["exp"])

    def _role(self, claims: dict[str, Any]) -> Role:
        """The role the token's role claim names: ours by name, or an identity provider's
        mapped (a claim may hold a list: its first value that maps)."""
        value: Any = claims
        for name in self._role_claim:
            value = value.get(name) if isinstance(value, dict) else None
        for candidate in value if isinstance(value, list) else [value]:
            if not isinstance(candidate, str):
                continue
            if self._role_map:
                if candidate in self._role_map:
                    return self._role_map[candidate]
            elif candidate in Role._value2member_map_:
                return Role(candidate)
        raise ValueError(f"no role of ours in the claim {'.'.join(self._role_claim)!r}")

    def _decode(self, token: str, keys: list[VerifyingKey]) -> dict[str, Any]:
        """The claims, checked with the first of `keys` whose signature holds."""
        for key in keys[:-1]:
            try:
                return self._decode_with(token, key)
            except jwt.InvalidSignatureError:
                continue
        return self._decode_with(token, keys[-1])

    def _decode_with(self, token: str, verifying: VerifyingKey) -> dict[str, Any]:
        # The key's own algorithm, never the token's say.
        claims: dict[str, Any] = jwt.decode(
            token,
            verifying.key,
            algorithms=[verifying.algorithm],
            audience=self._audience,
            issuer=self._issuer,
            options={"require": REQUIRED_CLAIMS},
            leeway=self._leeway_s,
        )
        return claims


def verifier_from_settings(settings: HttpServiceSettings) -> TokenVerifier:
    clock = SystemClock()
    keys: KeySource
    if settings.jwt_jwks_url is not None:
        keys = RemoteKeySet(settings.jwt_jwks_url, clock)
    else:
        assert settings.jwt_public_key_path is not None  # the settings check one is set
        keys = KeySet(settings.jwt_public_key_path, clock)
    return TokenVerifier(
        keys,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        max_lifetime_s=settings.token_max_lifetime_s,
        leeway_s=settings.token_leeway_s,
        clock=clock,
        role_claim=settings.jwt_role_claim,
        role_map=settings.jwt_role_map,
    )


def require_role(principal: Principal, allowed: Iterable[Role]) -> Principal:
    if principal.role not in set(allowed):
        raise ForbiddenError(f"role {principal.role.value!r} may not do this")
    return principal


def bearer_token(authorization: str | None) -> str:
    """The token from an `Authorization: Bearer ...` header, or AuthError."""
    if not authorization:
        raise AuthError("missing Authorization header")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("Authorization must be 'Bearer <token>'")
    return token.strip()


def generate_keypair(private_path: Path, public_path: Path) -> None:
    """Write a new Ed25519 keypair as PEM; the private key readable by its owner only."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    private_path.touch(mode=0o600)
    private_path.write_bytes(private_pem)
    public_path.write_bytes(public_pem)


def issue_token(
    private_key_path: Path,
    *,
    sub: str,
    role: Role,
    ttl_s: int = 3600,
    audience: str = JWT_AUDIENCE,
    issuer: str = JWT_ISSUER,
    clock: Clock | None = None,
    extra: dict[str, Any] | None = None,
) -> str:
    key = serialization.load_pem_private_key(private_key_path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{private_key_path} is not an Ed25519 private key")
    issued = int((clock or SystemClock()).wall())
    claims: dict[str, Any] = {
        "sub": sub,
        "role": role.value,
        "iat": issued,
        "exp": issued + ttl_s,
        "aud": audience,
        "iss": issuer,
        **(extra or {}),
    }
    # The key's id, so that verifiers holding several keys (a rotation) know which.
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid_of(key.public_key())})
