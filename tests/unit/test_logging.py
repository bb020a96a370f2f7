"""The one log format: JSON lines with the agreed fields, the request id while one is set,
whatever library logs; repeated lines throttled; logs rotated under a live writer."""

import io
import json
import logging
import logging.config
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.logs import rotate, rotate_all
from runtime.logging import (
    FIELDS,
    REQUEST_ID,
    JsonFormatter,
    Throttle,
    accepted_request_id,
    configure_logging,
)


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    # Other tests in this session configure some (the CLI quiets aiokafka): start clean.
    for name in ("ingest.app", "uvicorn.error", "aiokafka", "aiokafka.conn", "streams.pipeline"):
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "disabled", False)
        monkeypatch.setattr(logger, "level", logging.NOTSET)
        monkeypatch.setattr(logger, "handlers", [])
        monkeypatch.setattr(logger, "propagate", True)
    configure_logging("INFO", "ingest")
    yield out
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    logging.root.handlers.clear()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_every_logger_writes_json_with_the_agreed_fields(captured: io.StringIO) -> None:
    logging.getLogger("ingest.app").info("accepted %d pings", 3)
    logging.getLogger("uvicorn.error").info(
        "Started server process [%d]", 1, extra={"color_message": "Started \x1b[36m%d\x1b[0m"}
    )
    logging.getLogger("aiokafka.conn").error("Unable connect to node with id %s", 1)
    token = REQUEST_ID.set("req-1")
    try:
        logging.getLogger("ingest.app").warning("slow", extra={"elapsed_ms": 12})
    finally:
        REQUEST_ID.reset(token)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("streams.pipeline").exception("failed")
    got = lines(captured)
    assert len(got) == 5
    for entry in got:
        assert set(FIELDS) <= set(entry), entry
        assert entry["service"] == "ingest" and entry["pid"] == os.getpid()
    assert got[0]["msg"] == "accepted 3 pings" and got[0]["level"] == "info"
    assert got[1]["logger"] == "uvicorn.error" and "color_message" not in got[1]
    assert got[2]["level"] == "error" and got[2]["logger"] == "aiokafka.conn"
    assert "request_id" not in got[0]
    assert got[3]["request_id"] == "req-1" and got[3]["elapsed_ms"] == 12
    assert "ValueError: boom" in str(got[4]["exc"])


def test_an_explicit_request_id_wins_over_the_context() -> None:
    record = logging.LogRecord("s", logging.WARNING, "", 0, "dead letter", (), None)
    record.request_id = "from-the-record"
    token = REQUEST_ID.set("from-the-request")
    try:
        entry = json.loads(JsonFormatter("streams").format(record))
    finally:
        REQUEST_ID.reset(token)
    assert entry["request_id"] == "from-the-record"


def test_a_20_second_outage_writes_a_handful_of_lines_not_thousands() -> None:
    now = [0.0]
    throttle = Throttle(burst=3, window_s=10.0, clock=lambda: now[0])
    kinds = [
        ("aiokafka.conn", logging.ERROR, "Unable connect to node with id %s: %s"),
        ("ingest.publisher", logging.WARNING, "produce failed, retrying: %s"),
        ("streams.pipeline", logging.WARNING, "%s failed, retrying: %s"),
    ]
    passed: list[logging.LogRecord] = []
    # 20 s at 100 lines a second of each kind.
    for tick in range(2000):
        now[0] = tick / 100
        for name, level, msg in kinds:
            record = logging.LogRecord(name, level, "", 0, msg, ("x", "y")[: msg.count("%s")], None)
            if throttle.filter(record):
                passed.append(record)
    assert len(passed) <= 3 * 3 * 2  # each kind: a burst per 10 s window
    assert len(passed) < 6000 / 100
    # After the outage, the next line of a kind says how many were dropped.
    now[0] = 40.0
    after = logging.LogRecord(kinds[0][0], kinds[0][1], "", 0, kinds[0][2], ("x", "y"), None)
    assert throttle.filter(after)
    assert getattr(after, "suppressed", 0) > 900
    # Different messages are different kinds: a new one is never held back by another.
    fresh = logging.LogRecord("ingest.app", logging.INFO, "", 0, "broker is back", (), None)
    assert throttle.filter(fresh) and not hasattr(fresh, "suppressed")


def test_request_ids_from_callers_are_kept_only_when_sane() -> None:
    assert accepted_request_id("abc-123_x.y:z") == "abc-123_x.y:z"
    for bad in (None, "", "a b", "x" * 65, 'quote"', "new\nline"):
        made = accepted_request_id(bad)
        assert made != bad and len(made) == 32


def test_rotation_keeps_copies_and_the_writer_goes_on_at_the_new_end(tmp_path: Path) -> None:
    path = tmp_path / "api-1.log"
    with open(path, "ab") as writer:  # as the stack opens a process's stdout
        writer.write(b"a" * 100 + b"\n")
        writer.flush()
        assert not rotate(path, max_bytes=1000, keep=2)
        writer.write(b"b" * 1000 + b"\n")
        writer.flush()
        assert rotate(path, max_bytes=1000, keep=2)
        writer.write(b"after\n")
        writer.flush()
        assert path.read_bytes() == b"after\n"  # no hole of zeros before it
        assert (tmp_path / "api-1.log.1").stat().st_size == 1102
        writer.write(b"c" * 1100)
        writer.flush()
        assert rotate_all(tmp_path, max_bytes=1000, keep=2) == ["api-1.log"]
    assert (tmp_path / "api-1.log.2").stat().st_size == 1102
    assert (tmp_path / "api-1.log.1").read_bytes().startswith(b"after\n")
    assert not (tmp_path / "api-1.log.3").exists()
