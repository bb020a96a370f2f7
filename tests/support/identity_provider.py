"""An identity provider for tests: RSA signing keys with kids of its own, and its JWKS
document served over HTTP on 127.0.0.1 (as Keycloak or Auth0 serve theirs)."""

import contextlib
import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER, AUDIENCE = "https://idp.example/realms/fleet", "telemetry-fleet"


class Provider:
    """An identity provider's JWKS endpoint, and its signing keys."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0

    def add_key(self, kid: str) -> None:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def document(self) -> bytes:
        entries = [
            orjson.loads(jwt.algorithms.RSAAlgorithm.to_jwk(k.public_key())) | {"kid": kid}
            for kid, k in self.keys.items()
        ]
        return orjson.dumps({"keys": entries})

    def token(self, kid: str, **claims: Any) -> str:
        now = int(time.time())
        base = {"sub": "u-17", "iat": now, "exp": now + 300, "iss": ISSUER, "aud": AUDIENCE}
        return jwt.encode(base | claims, self.keys[kid], algorithm="RS256", headers={"kid": kid})


@contextlib.contextmanager
def serving(provider: Provider) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            provider.fetches += 1
            body = provider.document()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/realms/fleet/certs"
    finally:
        server.shutdown()
        server.server_close()
