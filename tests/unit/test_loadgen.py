"""The open-loop load generator (bench/loadgen) against a server of the test's own: it keeps
every driver's schedule whatever the answers do, counts latency from the due time, uses
each driver's own token, and counts what went wrong."""

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench.loadgen_runner import LoadResult, ensure_built, run_loadgen
from infra.procs import free_port
from schemas.pings import PingBatch

# Socket-level code, against listeners of the test's own on 127.0.0.1.
pytestmark = pytest.mark.loopback


class Server:
    """Answers 202 after `delay_s`; or 503 to every `fail_every`-th request."""

    def __init__(self, delay_s: float = 0.0, fail_every: int = 0) -> None:
        self.delay_s = delay_s
        self.fail_every = fail_every
        self.requests: list[tuple[float, str, bytes]] = []
        self.ports: list[tuple[str, int]] = []  # each request's token and client port
        self.lock = threading.Lock()


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_built(tmp_path_factory.mktemp("loadgen"))


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.txt"
    path.write_text("\n".join(f"token-{i}" for i in range(20)) + "\n")
    return path


def serve(behaviour: Server) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # kept-alive connections, as the generator expects

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with behaviour.lock:
                behaviour.requests.append((time.time(), self.headers["Authorization"], body))
                behaviour.ports.append((self.headers["Authorization"], self.client_address[1]))
                n = len(behaviour.requests)
            time.sleep(behaviour.delay_s)  # a slow server: the answer waits until its time is up
            status = 503 if behaviour.fail_every and n % behaviour.fail_every == 0 else 202
            answer = b'{"accepted": 1, "rejected": []}'
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
            except OSError:
                pass  # the generator gave up on this one (its timeout)

        def log_message(self, *args: object) -> None:
            pass

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/v1/pings"
    finally:
        server.shutdown()
        server.server_close()


def run(loadgen: Path, url: str, tokens: Path, **kwargs: float) -> LoadResult:
    options = {"drivers": 20, "interval_s": 0.5, "duration_s": 2.0} | kwargs
    return run_loadgen(
        loadgen,
        url,
        tokens,
        drivers=int(options["drivers"]),
        interval_s=options["interval_s"],
        duration_s=options["duration_s"],
        warmup_s=options.get("warmup_s", 0.0),
        timeout_s=options.get("timeout_s", 10.0),
        max_conns=int(options.get("max_conns", 4000)),
        conn_per_driver=bool(options.get("conn_per_driver", False)),
    )


def test_each_driver_posts_a_fresh_valid_ping_on_its_schedule_with_its_own_token(
    loadgen: Path, tokens: Path
) -> None:
    behaviour = Server()
    for url in serve(behaviour):
        result = run(loadgen, url, tokens)
    raw = result.raw
    # 20 drivers every 0.5 s for 2 s: 80 requests, all answered 202 on the first try.
    assert raw["due"] == 80 and raw["sent"] == 80 and raw["statuses"] == {"202": 80}
    assert result.accepted_first_try == 1.0
    per_token = Counter(auth for _, auth, _ in behaviour.requests)
    assert per_token == {f"Bearer token-{i}": 4 for i in range(20)}
    ids = set()
    for sent_at, _, body in behaviour.requests:
        batch = PingBatch.model_validate_json(body)  # the contract's body, as ingest reads it
        (ping,) = batch.pings
        ids.add(ping.ping_id)
        assert abs(ping.ts.timestamp() - sent_at) < 1.0  # dated when it was due
    assert len(ids) == 80  # a fresh id each: the stream would deduplicate a repeated one
    assert sum(s["sent"] for s in raw["timeline"]) == 80


def test_with_a_connection_per_driver_each_driver_keeps_its_own(
    loadgen: Path, tokens: Path
) -> None:
    behaviour = Server()
    for url in serve(behaviour):
        result = run(loadgen, url, tokens, conn_per_driver=True)
    assert result.raw["statuses"] == {"202": 80}
    assert result.raw["connections"] == 20  # one per driver, dialled once, kept alive
    ports_of: dict[str, set[int]] = {}
    for auth, port in behaviour.ports:
        ports_of.setdefault(auth, set()).add(port)
    assert len(ports_of) == 20 and all(len(p) == 1 for p in ports_of.values())
    assert len({p for ports in ports_of.values() for p in ports}) == 20  # none shared


def test_slow_answers_do_not_slow_the_schedule_and_count_from_the_due_time(
    loadgen: Path, tokens: Path
) -> None:
    behaviour = Server(delay_s=0.4)
    for url in serve(behaviour):
        result = run(loadgen, url, tokens)
    raw = result.raw
    # Open loop: every request left when due, though each answer took 0.4 s (a closed loop
    # of the connections it opened at first would have sent fewer).
    assert raw["sent"] == 80 and raw["statuses"] == {"202": 80}
    assert result.p99_ms >= 400 and raw["latency_ms"]["p50"] >= 400
    assert raw["connections"] >= 10  # as many as were waiting at once


def test_failures_are_counted_by_kind(loadgen: Path, tokens: Path) -> None:
    behaviour = Server(fail_every=4)
    for url in serve(behaviour):
        result = run(loadgen, url, tokens)
    assert result.raw["statuses"] == {"202": 60, "503": 20}
    assert result.accepted_first_try == 0.75
    port = free_port()  # nobody listens here
    refused = run(loadgen, f"http://127.0.0.1:{port}/v1/pings", tokens, duration_s=1.0)
    assert refused.raw["errors"] == {"refused": 40} and refused.accepted_first_try == 0.0


def test_a_server_that_never_answers_is_a_timeout_and_the_warm_up_is_not_counted(
    loadgen: Path, tokens: Path
) -> None:
    behaviour = Server(delay_s=3.0)
    for url in serve(behaviour):
        result = run(loadgen, url, tokens, warmup_s=1.0, duration_s=1.0, timeout_s=1.0)
    raw = result.raw
    assert raw["due"] == 40  # the measured second only
    assert len(behaviour.requests) == 80  # the warm-up's requests were sent too
    assert raw["errors"] == {"timeout": 40} and raw["completed"] == 0


def test_the_summary_is_the_benchmark_report_shape(loadgen: Path, tokens: Path) -> None:
    for url in serve(Server()):
        summary = run(loadgen, url, tokens).summary()
    assert summary["accepted_first_try_pct"] == 100.0
    assert summary["requests_per_s"] == pytest.approx(40.0)
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    assert json.dumps(summary)  # plain JSON for the report


def test_a_server_whose_accept_queue_is_full_times_out_requests_not_the_generator(
    loadgen: Path, tokens: Path
) -> None:
    # A listener that never accepts: past its backlog, connects hang in SYN retries. The
    # generator must go on sending on schedule and give up on each at its timeout.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        result = run(loadgen, f"http://127.0.0.1:{port}/v1/pings", tokens, timeout_s=1.0)
    finally:
        listener.close()
    raw = result.raw
    assert raw["due"] == raw["sent"] == 80
    assert raw["errors"] == {"timeout": 80} and raw["completed"] == 0


def test_past_its_connection_cap_a_due_request_waits_and_its_wait_counts(
    loadgen: Path, tokens: Path
) -> None:
    # 40 requests/s answered in 0.1 s each on at most 2 connections: 20/s get through, the
    # rest queue (open loop still: they are due, and their latency counts from then).
    for url in serve(Server(delay_s=0.1)):
        result = run(loadgen, url, tokens, max_conns=2, duration_s=1.0, timeout_s=30.0)
    raw = result.raw
    assert raw["connections"] == 2 and raw["queued_max"] > 5
    assert raw["statuses"] == {"202": 40}
    assert raw["latency_ms"]["p99"] > raw["service_ms"]["p99"] + 200
