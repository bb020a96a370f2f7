"""A customer app, the whole of its part: order a delivery, share it, follow it live over
the notifier until it is delivered, and fetch the proof photo.

    python -m examples.customer_app --base http://127.0.0.1:18080 --token $CUSTOMER

Only httpx, websockets and the published contract: `POST /v1/jobs` (201),
`POST /v1/jobs/{id}/share` (a link for the recipient's phone), the WebSocket at `/ws`
(auth, subscribe, then a snapshot and every event in seq order; docs/notifier.md), and
`GET /v1/jobs/{id}/proof`."""

import argparse
import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
from websockets.asyncio.client import connect

ORDER = {"pickup": {"lat": 12.9716, "lon": 77.5946}, "dropoff": {"lat": 12.9352, "lon": 77.6245}}


def order(client: httpx.Client) -> dict[str, Any]:
    """A new job, and a share link to send to whoever receives the parcel."""
    job: dict[str, Any] = client.post("/v1/jobs", json=ORDER).raise_for_status().json()
    link = client.post(f"/v1/jobs/{job['job_id']}/share", json={"ttl_s": 3600})
    job["share_page"] = (
        str(client.base_url).rstrip("/") + link.raise_for_status().json()["page_url"]
    )
    return job


async def follow(
    ws_url: str,
    token: str,
    job_id: str,
    until: str = "job.completed",
    on_message: Callable[[dict[str, Any]], None] = print,
    timeout_s: float = 120,
) -> list[dict[str, Any]]:
    """The job's snapshot and events until `until`, reconnecting and resuming from the
    last seq seen when the connection drops (no event is missed or repeated)."""
    seen: list[dict[str, Any]] = []
    last_seq: int | None = None
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                async with connect(ws_url) as ws:
                    await ws.send(json.dumps({"type": "auth", "token": token}))
                    subscribe: dict[str, Any] = {"type": "subscribe", "job_id": job_id}
                    if last_seq is not None:
                        subscribe["last_seq"] = last_seq
                    await ws.send(json.dumps(subscribe))
                    async for raw in ws:
                        message = json.loads(raw)
                        if message["type"] == "ping":
                            await ws.send(json.dumps({"type": "pong"}))
                            continue
                        seen.append(message)
                        on_message(message)
                        if "seq" in message:
                            last_seq = message["seq"]
                        if message["type"] == until:
                            return seen
            except OSError:
                await asyncio.sleep(1)  # the network went away: resume from last_seq


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the platform's public URL")
    parser.add_argument("--token", required=True, help="the customer's JWT")
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.token}"}
    with httpx.Client(base_url=args.base, headers=headers, timeout=30) as client:
        job = order(client)
        print(f"ordered job {job['job_id']}; share {job['share_page']}")
        ws_url = args.base.replace("http", "ws", 1).rstrip("/") + "/ws"
        asyncio.run(follow(ws_url, args.token, job["job_id"]))
        proof = client.get(f"/v1/jobs/{job['job_id']}/proof", params={"size": "thumb"})
        print(f"proof thumbnail: {proof.status_code}, {len(proof.content)} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
