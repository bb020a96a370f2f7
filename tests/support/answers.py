"""Comparing HTTP answers whole: what the fast-path equality tests compare."""

import httpx

Answer = tuple[int, list[tuple[str, str]], bytes]


def headers_of(r: httpx.Response) -> list[tuple[str, str]]:
    """The answer's headers; a 503's Retry-After is jittered on purpose (1 to 3 s, so that
    clients do not all come back at once): checked for its range, not its value."""
    headers = sorted(r.headers.items())
    if r.status_code == 503:
        assert 1 <= int(r.headers["retry-after"]) <= 3
        headers = [(k, "1..3" if k == "retry-after" else v) for k, v in headers]
    return headers


def whole(r: httpx.Response) -> Answer:
    """Status, headers and body: the answer byte for byte (but a 503's jitter)."""
    return r.status_code, headers_of(r), r.content
