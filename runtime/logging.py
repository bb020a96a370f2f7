"""One log format for every process of ours (docs/ops.md): a JSON object per line on
stdout, with the same fields whoever logs (our code, uvicorn, Faust, aiokafka,
websockets): `ts`, `level`, `logger`, `msg`, `service`, `pid`, and `request_id` while a
request (or a record carrying its id) is being handled. The stack writes stdout to
`logs/<name>.log` and rotates it (infra/logs.py).

Repeated lines are throttled: a broker outage makes every retry loop and client library
log the same complaint many times a second, and the log then hides everything else. The
first `burst` lines of a kind in a window pass; the rest are counted, and the next one to
pass says how many were dropped (`suppressed`)."""

import logging
import logging.config
import random
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

# The request (or Kafka record) being handled: its lines carry the id.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
REQUEST_ID_HEADER = "X-Request-ID"
# A Kafka header name: ingest puts the request's id on the record, the stream reads it.
REQUEST_ID_KAFKA_HEADER = "request_id"
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Every LogRecord has these; anything else on a record came in `extra=` and is logged.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's copy of `msg` with terminal colours
}
_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()
FIELDS = ("ts", "level", "logger", "msg", "service", "pid")


def new_request_id() -> str:
    # 128 random bits from the process's generator, not the OS's: an id needs to be
    # unique, not unguessable, and os.urandom is a system call per request.
    return f"{random.getrandbits(128):032x}"


def accepted_request_id(given: str | None) -> str:
    """The caller's id when it is a sane token (it ends up in logs), else a new one."""
    if given is not None and _VALID_ID.fullmatch(given):
        return given
    return new_request_id()


class JsonFormatter(logging.Formatter):
    """Formats a log record as one JSON object per line: time, level, logger, message, service, pid
    and the request id when there is one."""

    def __init__(self, service: str = "") -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self._service,
            "pid": record.process,
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


@dataclass
class _Seen:
    window_start: float
    passed: int
    suppressed: int


class Throttle(logging.Filter):
    """At most `burst` records of one kind (logger, level, unformatted message) per
    `window_s`; the first one after a window reports how many were suppressed."""

    def __init__(
        self,
        burst: int = 3,
        window_s: float = 10.0,
        max_kinds: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self._burst = burst
        self._window_s = window_s
        self._max_kinds = max_kinds
        self._clock = clock
        self._seen: OrderedDict[tuple[str, int, str], _Seen] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None or now - seen.window_start >= self._window_s:
            if seen is not None and seen.suppressed:
                record.suppressed = seen.suppressed
            self._seen[key] = _Seen(now, 1, 0)
            self._seen.move_to_end(key)
            while len(self._seen) > self._max_kinds:
                self._seen.popitem(last=False)
            return True
        if seen.passed < self._burst:
            seen.passed += 1
            return True
        seen.suppressed += 1
        return False


def logging_config(level: str, service: str) -> dict[str, Any]:
    """The `logging.config.dictConfig` document: also handed to Faust's worker, which
    would otherwise install its own coloured format."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter, "service": service}},
        "filters": {"throttle": {"()": Throttle}},
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "json",
                "filters": ["throttle"],
            }
        },
        "root": {"level": level.upper(), "handlers": ["stdout"]},
        # uvicorn's loggers keep no handlers of their own (it is run with log_config=None):
        # their lines come through the root's.
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }


def configure_logging(level: str, service: str = "") -> None:
    logging.config.dictConfig(logging_config(level, service))
    logging.captureWarnings(True)  # a library's warning is a JSON line too


class RequestIdMiddleware:
    """ASGI middleware: each HTTP request gets an id (the caller's `X-Request-ID` when it is
    sane, else a new one), set for its log lines and returned in the answer's header."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == _REQUEST_ID_NAME), None)
        request_id = accepted_request_id(given.decode("latin-1") if given else None)
        token = REQUEST_ID.set(request_id)

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((_REQUEST_ID_NAME, request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
