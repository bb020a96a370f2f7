"""Tokens from an identity provider (runtime/remote_keys.py, runtime/auth.py): its JWKS URL
served here, RS256 keys with kids of its own, its role claim mapped to our roles."""

import socket
import time
from pathlib import Path

import httpx
import pytest

from runtime.auth import AuthError, TokenVerifier
from runtime.clock import ManualClock
from runtime.remote_keys import RemoteKeySet
from runtime.settings import HttpServiceSettings
from schemas.auth import Role
from tests.support.identity_provider import AUDIENCE, ISSUER, Provider, serving


def verifier(url: str, clock: ManualClock) -> TokenVerifier:
    return TokenVerifier(
        RemoteKeySet(url, clock),
        audience=AUDIENCE,
        issuer=ISSUER,
        clock=clock,
        role_claim="realm_access.roles",
        role_map={"fleet-dispatch": Role.DISPATCHER, "fleet-customer": Role.CUSTOMER},
    )


@pytest.mark.loopback
def test_a_providers_token_is_verified_and_its_role_mapped() -> None:
    provider = Provider()
    provider.add_key("kc-1")
    with serving(provider) as url:
        v = verifier(url, ManualClock(time.time()))
        roles = {"roles": ["offline_access", "fleet-dispatch"]}
        principal = v.verify(provider.token("kc-1", realm_access=roles))
        assert (principal.sub, principal.role) == ("u-17", Role.DISPATCHER)
        for claims in ({"realm_access": {"roles": ["offline_access"]}}, {"role": "ops"}, {}):
            with pytest.raises(AuthError, match="no role of ours"):
                v.verify(provider.token("kc-1", **claims))
        with pytest.raises(AuthError):  # another issuer's
            v.verify(provider.token("kc-1", iss="https://elsewhere", realm_access=roles))


@pytest.mark.loopback
def test_a_rotation_at_the_provider_is_fetched_and_unknown_kids_do_not_hammer_it() -> None:
    provider = Provider()
    provider.add_key("kc-1")
    clock = ManualClock(time.time())
    with serving(provider) as url:
        v = verifier(url, clock)
        provider.add_key("kc-2")
        roles = {"roles": ["fleet-customer"]}
        fresh = provider.token("kc-2", realm_access=roles)
        for _ in range(5):  # within min_fetch_s of the last fetch: refused, not fetched
            with pytest.raises(AuthError, match="unknown key id"):
                v.verify(provider.token("kc-2", realm_access=roles, jti=str(_)))
        assert provider.fetches == 1
        clock.advance(11)
        with pytest.raises(AuthError, match="unknown key id"):
            v.verify(fresh)  # refused now; its fetch runs aside
        deadline = time.monotonic() + 5
        while "kc-2" not in v.keys.current() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert v.verify(fresh).role == Role.CUSTOMER  # sent again: it passes
        assert provider.fetches == 2


@pytest.mark.loopback
def test_a_provider_that_does_not_answer_at_start_stops_the_service() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{closed.getsockname()[1]}/certs"
        with pytest.raises(httpx.ConnectError):
            RemoteKeySet(url, ManualClock(0), timeout_s=1)


def test_one_key_source_and_only_one() -> None:
    with pytest.raises(ValueError, match="one of"):
        HttpServiceSettings(port=1)
    with pytest.raises(ValueError, match="one of"):
        HttpServiceSettings(port=1, jwt_public_key_path=Path("k"), jwt_jwks_url="http://x")
    settings = HttpServiceSettings(port=1, jwt_public_key_path="", jwt_jwks_url="http://x")
    assert settings.jwt_public_key_path is None
