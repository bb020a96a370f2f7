"""JWT verification refuses every token it should (docs/api.md)."""

import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime.auth import (
    AuthError,
    ForbiddenError,
    TokenVerifier,
    bearer_token,
    generate_keypair,
    issue_token,
    require_role,
)
from runtime.clock import ManualClock
from schemas.auth import JWT_AUDIENCE, JWT_ISSUER, Principal, Role
from tests.support.forged_tokens import b64url, claims, hs256_with_public_key


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    generate_keypair(private, public)
    yield private, public


@pytest.fixture
def verifier(keys: tuple[Path, Path]) -> TokenVerifier:
    return TokenVerifier.from_file(keys[1], audience=JWT_AUDIENCE, issuer=JWT_ISSUER)


def test_a_valid_token_gives_its_principal(
    keys: tuple[Path, Path], verifier: TokenVerifier
) -> None:
    principal = verifier.verify(issue_token(keys[0], sub="drv-7", role=Role.DRIVER))
    assert (principal.sub, principal.role) == ("drv-7", Role.DRIVER)


def test_private_key_is_owner_only(keys: tuple[Path, Path]) -> None:
    assert keys[0].stat().st_mode & 0o077 == 0


def test_alg_none_is_refused(verifier: TokenVerifier) -> None:
    token = jwt.encode(claims(), key=None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        verifier.verify(token)


def test_hs256_signed_with_the_public_key_is_refused(
    keys: tuple[Path, Path], verifier: TokenVerifier
) -> None:
    with pytest.raises(AuthError):
        verifier.verify(hs256_with_public_key(keys[1], role="ops"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl_s": -120},  # beyond the 30 s leeway
        {"audience": "someone-else"},
        {"issuer": "evil"},
    ],
)
def test_expired_wrong_audience_or_issuer_is_refused(
    keys: tuple[Path, Path], verifier: TokenVerifier, kwargs: dict[str, object]
) -> None:
    with pytest.raises(AuthError):
        verifier.verify(issue_token(keys[0], sub="x", role=Role.DRIVER, **kwargs))  # type: ignore[arg-type]


def test_tampered_signature_or_payload_is_refused(
    keys: tuple[Path, Path], verifier: TokenVerifier
) -> None:
    token = issue_token(keys[0], sub="drv-1", role=Role.DRIVER)
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    with pytest.raises(AuthError):
        verifier.verify(f"{header}.{payload}.{flipped}")
    forged = b64url(b'{"sub":"drv-2","role":"ops"}')
    with pytest.raises(AuthError):
        verifier.verify(f"{header}.{forged}.{signature}")


def test_a_token_from_another_key_is_refused(tmp_path: Path, verifier: TokenVerifier) -> None:
    other_private, other_public = tmp_path / "o.pem", tmp_path / "o.pub"
    generate_keypair(other_private, other_public)
    with pytest.raises(AuthError):
        verifier.verify(issue_token(other_private, sub="x", role=Role.OPS))


def test_missing_claims_are_refused(keys: tuple[Path, Path], verifier: TokenVerifier) -> None:
    key = serialization.load_pem_private_key(keys[0].read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    token = jwt.encode(
        {"sub": "x", "role": "driver", "aud": JWT_AUDIENCE, "iss": JWT_ISSUER},
        key,
        algorithm="EdDSA",
    )
    with pytest.raises(AuthError):
        verifier.verify(token)  # no exp


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_bad_authorization_headers(header: str | None) -> None:
    with pytest.raises(AuthError):
        bearer_token(header)


def test_roles_are_enforced() -> None:
    driver = Principal(sub="d", role=Role.DRIVER)
    assert require_role(driver, [Role.DRIVER]) is driver
    with pytest.raises(ForbiddenError):
        require_role(driver, [Role.DISPATCHER, Role.OPS])


def test_a_cached_token_still_expires(keys: tuple[Path, Path]) -> None:
    clock = ManualClock(wall=time.time())
    verifier = TokenVerifier.from_file(
        keys[1], audience=JWT_AUDIENCE, issuer=JWT_ISSUER, clock=clock
    )
    token = issue_token(keys[0], sub="d", role=Role.DRIVER, ttl_s=60, clock=clock)
    assert verifier.verify(token).sub == "d"
    assert verifier.verify(token).sub == "d"  # from the cache
    clock.advance(61)
    with pytest.raises(AuthError):
        verifier.verify(token)


def test_the_cache_is_bounded_and_never_trusts_a_changed_token(keys: tuple[Path, Path]) -> None:
    verifier = TokenVerifier.from_file(
        keys[1], audience=JWT_AUDIENCE, issuer=JWT_ISSUER, cache_size=3
    )
    tokens = [issue_token(keys[0], sub=f"d{i}", role=Role.DRIVER) for i in range(10)]
    for t in tokens:
        verifier.verify(t)
    assert len(verifier._cache) == 3
    head, payload, signature = tokens[-1].split(".")
    with pytest.raises(AuthError):
        verifier.verify(f"{head}.{payload}.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}")


def test_a_token_living_longer_than_the_maximum_is_refused(keys: tuple[Path, Path]) -> None:
    strict = TokenVerifier.from_file(
        keys[1], audience=JWT_AUDIENCE, issuer=JWT_ISSUER, max_lifetime_s=24 * 3600
    )
    assert strict.verify(issue_token(keys[0], sub="d", role=Role.OPS, ttl_s=24 * 3600))
    ten_years = issue_token(keys[0], sub="d", role=Role.OPS, ttl_s=10 * 365 * 24 * 3600)
    with pytest.raises(AuthError, match="lifetime"):
        strict.verify(ten_years)


def test_a_token_issued_in_the_future_beyond_the_leeway_is_refused(
    keys: tuple[Path, Path], verifier: TokenVerifier
) -> None:
    soon, later = ManualClock(time.time() + 10), ManualClock(time.time() + 300)
    assert verifier.verify(issue_token(keys[0], sub="d", role=Role.DRIVER, clock=soon))
    with pytest.raises(AuthError):
        verifier.verify(issue_token(keys[0], sub="d", role=Role.DRIVER, clock=later))


@pytest.mark.parametrize("sub", ["drv\x00x", "", "a b", "d" * 129])
def test_a_malformed_subject_is_refused(
    keys: tuple[Path, Path], verifier: TokenVerifier, sub: str
) -> None:
    with pytest.raises(AuthError):
        verifier.verify(issue_token(keys[0], sub=sub, role=Role.DRIVER))
