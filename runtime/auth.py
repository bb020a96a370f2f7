"""JWT: Ed25519-signed tokens. Services verify with the public key; only tooling signs."""

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.clock import Clock, SystemClock
from runtime.settings import HttpServiceSettings
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Principal, Role

# Hard-coded: the algorithm is never taken from the token header ("alg: none", HS256
# signed with the public key as a secret, and so on are all refused).
ALGORITHMS = ["EdDSA"]
REQUIRED_CLAIMS = ["exp", "iat", "aud", "iss", "sub"]


class AuthError(Exception):
    """The token is missing, malformed, expired or not ours (HTTP 401)."""


class ForbiddenError(Exception):
    """The token is valid but its role may not do this (HTTP 403)."""


class TokenVerifier:
    """Verifies tokens, remembering the ones it verified: a driver app sends the same token
    with every ping, and the signature check is most of the cost of a small request. The
    cache is keyed by the whole token (signature included), bounded, and an entry never
    outlives its token's `exp`."""

    def __init__(
        self,
        public_key: Ed25519PublicKey,
        *,
        audience: str,
        issuer: str,
        max_lifetime_s: int = 24 * 3600,
        leeway_s: int = 30,
        cache_size: int = 100_000,
        clock: Clock | None = None,
    ) -> None:
        self._key = public_key
        self._audience = audience
        self._issuer = issuer
        self._max_lifetime_s = max_lifetime_s
        self._leeway_s = leeway_s
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._cache_size = cache_size
        self._clock = clock or SystemClock()

    @classmethod
    def from_file(cls, path: Path, **kwargs: Any) -> "TokenVerifier":
        key = serialization.load_pem_public_key(path.read_bytes())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"{path} is not an Ed25519 public key")
        return cls(key, **kwargs)

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
            claims = jwt.decode(
                token,
                self._key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": REQUIRED_CLAIMS},
                leeway=self._leeway_s,
            )
            principal = Principal(sub=str(claims["sub"]), role=Role(claims["role"]))
            lifetime = float(claims["exp"]) - float(claims["iat"])
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
            raise AuthError(f"invalid token: {exc}") from exc
        # A stolen long-lived token is a long-lived breach: refuse what no issuer of ours
        # would sign, and an iat in the future beyond the leeway (PyJWT checks nbf).
        if lifetime > self._max_lifetime_s:
            raise AuthError(f"invalid token: lifetime {lifetime:.0f} s exceeds the maximum")
        if float(claims["iat"]) > self._clock.wall() + self._leeway_s:
            raise AuthError("invalid token: issued in the future")
        return principal, float(claims["exp"])


def verifier_from_settings(settings: HttpServiceSettings) -> TokenVerifier:
    return TokenVerifier.from_file(
        settings.jwt_public_key_path,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        max_lifetime_s=settings.token_max_lifetime_s,
        leeway_s=settings.token_leeway_s,
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
    return jwt.encode(claims, key, algorithm="EdDSA")
