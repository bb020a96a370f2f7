"""The ceiling for the notifier: a bare websockets server on the same library and settings
(compression off, uvloop) doing the least a push server can. Each connection's first two
messages (auth, subscribe) are read and the second answered with a constant snapshot; a
control message `{"type": "broadcast", "job_id", "at"}` sends one frame to every
connection of that job. No tokens, no database, no Kafka, no resume."""

import asyncio
import os
import signal

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, serve

Subscribers = dict[str, set[ServerConnection]]


async def main() -> None:
    subscribers: Subscribers = {}

    async def handler(ws: ServerConnection) -> None:
        job_id = None
        try:
            async for raw in ws:
                message = orjson.loads(raw)
                if message["type"] == "subscribe":
                    job_id = message["job_id"]
                    subscribers.setdefault(job_id, set()).add(ws)
                    await ws.send(orjson.dumps({"type": "snapshot", "seq": 0}), text=True)
                elif message["type"] == "broadcast":
                    frame = orjson.dumps(
                        {"type": "job.completed", "job_id": message["job_id"], "seq": 1,
                         "at": message["at"]}
                    )  # fmt: skip
                    for sub in list(subscribers.get(message["job_id"], ())):
                        # As the notifier: written now, never awaited per client.
                        asyncio.get_running_loop().create_task(sub.send(frame, text=True))
        finally:
            if job_id is not None:
                subscribers.get(job_id, set()).discard(ws)

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with serve(
        handler, "127.0.0.1", int(os.environ["NAIVE_PORT"]), compression=None,
        ping_interval=25, ping_timeout=20, max_queue=4, server_header=None,
    ):  # fmt: skip
        await stop.wait()


if __name__ == "__main__":
    uvloop.run(main())
