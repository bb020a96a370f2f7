"""`GET /.well-known/jwks.json`: the public keys our tokens are verified with, for anyone
who verifies them too (another service, a gateway, an app)."""

from typing import Any

import orjson
from fastapi import APIRouter
from fastapi.responses import Response

from api.deps import StateDep
from runtime.jwks import document

router = APIRouter(tags=["keys"])

# Short enough that a rotation's new key is seen soon; a verifier that meets an unknown
# `kid` fetches the document again rather than wait.
CACHE_CONTROL = "public, max-age=300"
JWKS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A JWK Set (RFC 7517): every key that verifies, each with its `kid`",
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "example": {
                    "keys": [
                        {
                            "kty": "OKP",
                            "crv": "Ed25519",
                            "use": "sig",
                            "alg": "EdDSA",
                            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
                            "kid": "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k",
                        }
                    ]
                },
            }
        },
    }
}


@router.get(
    "/.well-known/jwks.json",
    summary="The public keys tokens are signed with (JWKS)",
    responses=JWKS,
    response_class=Response,
)
async def jwks(shared: StateDep) -> Response:
    body = orjson.dumps(document(shared.verifier.keys.current()))
    return Response(body, media_type="application/json", headers={"Cache-Control": CACHE_CONTROL})
