"""The HTTP ceiling of one ingest process: a bare ASGI handler on the same server (uvicorn,
uvloop, httptools) that reads the body, parses it and answers 202, with no auth, rate
limit, validation or Kafka. Single-ping ingest is measured against it."""

from typing import Any

import orjson

from bench.baselines import serve

ACCEPTED = orjson.dumps({"accepted": 1, "rejected": []})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ACCEPTED)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return  # lifespan: nothing to start
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    doc = orjson.loads(body)
    status = 202 if doc.get("pings") else 422
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ACCEPTED})


def factory() -> Any:
    """The same handler, for a server that takes a factory (granian in ingest_front)."""
    return app


if __name__ == "__main__":
    serve(app)
