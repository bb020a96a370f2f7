"""An identity provider's tokens at the real api: its JWKS URL, issuer, audience and role
mapping as settings of an api process beside the stack's; the key set served by the test
(tests/support/identity_provider.py)."""

import httpx
import orjson
import pytest

from infra.services import api_variants
from infra.stack import Stack
from runtime.auth import issue_token
from schemas.auth import Role
from tests.support.identity_provider import AUDIENCE, ISSUER, Provider, serving

pytestmark = pytest.mark.integration


def test_an_identity_providers_tokens_are_accepted_through_settings(stack: Stack) -> None:
    provider = Provider()
    provider.add_key("kc-1")
    with serving(provider) as url:
        env = {
            "API_JWT_PUBLIC_KEY_PATH": "",
            "API_JWT_JWKS_URL": url,
            "API_JWT_ISSUER": ISSUER,
            "API_JWT_AUDIENCE": AUDIENCE,
            "API_JWT_ROLE_CLAIM": "groups",
            "API_JWT_ROLE_MAP": orjson.dumps({"fleet-customers": "customer"}).decode(),
        }
        with api_variants(stack.config, 1, env, "api-idp") as [base]:

            def get(token: str) -> httpx.Response:
                return httpx.get(base + "/v1/jobs", headers={"Authorization": f"Bearer {token}"})

            customer = provider.token("kc-1", sub="idp-cust-1", groups=["fleet-customers"])
            r = get(customer)
            assert r.status_code == 200, r.text
            body = {"pickup": {"lat": 12.97, "lon": 77.59}, "dropoff": {"lat": 12.93, "lon": 77.62}}
            created = httpx.post(
                base + "/v1/jobs", json=body, headers={"Authorization": f"Bearer {customer}"}
            )
            assert created.status_code == 201, created.text
            assert get(customer).json()["jobs"][0]["customer_id"] == "idp-cust-1"
            # A group of no role of ours, another kid, the stack's own tokens: 401.
            stranger = Provider()  # a key the provider never published
            stranger.add_key("kc-unknown")
            refused = [
                provider.token("kc-1", groups=["fleet-drivers"]),
                provider.token("kc-1", sub="x", groups=["fleet-customers"], aud="other"),
                stranger.token("kc-unknown", groups=["fleet-customers"]),
                issue_token(stack.config.jwt_private_key, sub="c", role=Role.CUSTOMER),
            ]
            for token in refused:
                answer = get(token)
                assert answer.status_code == 401, answer.text
                assert answer.json()["error"]["code"] == "unauthorized"
            # The published keys: the provider's, through this api's JWKS.
            kids = {k["kid"] for k in httpx.get(base + "/.well-known/jwks.json").json()["keys"]}
            assert kids == {"kc-1"}
