"""`python -m bench.ws_load PLAN OUT`: WebSocket clients for the notifier benchmark, in a
process of their own (the notifier under test must not share its core with them). The plan
(JSON) lists the connections: URL, token and the job each subscribes to. Once every one
has its snapshot the process writes OUT + ".ready"; it then times the messages it gets
(a job event from its `at`, a position from its `ts`, both against this machine's clock)
until SIGTERM, and writes OUT (JSON) with the samples in milliseconds."""

import asyncio
import resource
import signal
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import uvloop
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

# Connections opened at once: a burst of thousands of handshakes is a benchmark of its own.
OPEN_AT_ONCE = 200


class Load:
    """Many WebSocket clients in one process, for the notifier scenario."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.plan = plan
        self.samples: dict[str, list[float]] = {}
        self.closed: dict[str, int] = {}
        self.snapshots = 0
        self.retries = 0  # connections opened again after a failed handshake or a drop
        self.ready = asyncio.Event()

    async def one(self, spec: dict[str, Any], gate: asyncio.Semaphore) -> None:
        """One client: connected and subscribed until it has its snapshot (a failed
        handshake is tried again, as an app would), then timing what it gets."""
        while True:
            try:
                async with gate:
                    ws = await connect(
                        spec["url"], compression=None, open_timeout=60, max_size=None
                    )
                    await ws.send(orjson.dumps({"type": "auth", "token": spec["token"]}))
                    await ws.send(orjson.dumps({"type": "subscribe", "job_id": spec["job_id"]}))
                break
            except (OSError, TimeoutError, InvalidHandshake, ConnectionClosed):
                self.retries += 1
                await asyncio.sleep(1)
        try:
            async for raw in ws:
                now = time.time()
                m = orjson.loads(raw)
                kind = m.get("type")
                if kind == "snapshot":
                    self.snapshots += 1
                    if self.snapshots == len(self.plan["connections"]):
                        self.ready.set()
                elif kind == "position":
                    self._sample(kind, now - datetime.fromisoformat(m["ts"]).timestamp())
                elif "seq" in m:
                    self._sample(kind, now - datetime.fromisoformat(m["at"]).timestamp())
        except ConnectionClosed as exc:
            code = str(exc.rcvd.code if exc.rcvd else 1006)
            self.closed[code] = self.closed.get(code, 0) + 1

    def _sample(self, kind: str, seconds: float) -> None:
        self.samples.setdefault(kind, []).append(round(seconds * 1000, 3))


async def main(plan: dict[str, Any], out: Path) -> None:
    load = Load(plan)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    tasks = [asyncio.create_task(load.one(spec, gate)) for spec in plan["connections"]]
    ready = asyncio.create_task(load.ready.wait())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([ready, stopped], return_when=asyncio.FIRST_COMPLETED)
    if load.ready.is_set():
        await asyncio.to_thread(Path(str(out) + ".ready").write_text, "ready\n")
    await stop.wait()
    for task in tasks:
        task.cancel()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        "connections": len(plan["connections"]),
        "samples_ms": load.samples,
        "closed": load.closed,
        "retries": load.retries,
        "cpu_s": usage.ru_utime + usage.ru_stime,
    }
    await asyncio.to_thread(out.write_bytes, orjson.dumps(result))


if __name__ == "__main__":
    # Each connection is a file descriptor: take the hard limit.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvloop.run(main(orjson.loads(Path(sys.argv[1]).read_bytes()), Path(sys.argv[2])))
