"""The code's shape, kept: no production function over 100 lines, and every public class
says what it promises in a docstring. The models the OpenAPI documents publish are the
exception: a docstring would become their published description, and the documents are
the contract."""

import json
from pathlib import Path

from tests.support.shape import functions, public_classes

ROOT = Path(__file__).resolve().parents[2]
MAX_FUNCTION_LINES = 100


def published_models() -> set[str]:
    names: set[str] = set()
    for document in (ROOT / "docs").glob("openapi-*.json"):
        names |= set(json.loads(document.read_text())["components"]["schemas"])
    return names


def test_no_production_function_is_over_100_lines() -> None:
    long = [f for f in functions(ROOT) if f.lines > MAX_FUNCTION_LINES]
    assert functions(ROOT), "the packages were read"
    assert not long, long


def test_every_public_class_has_a_docstring() -> None:
    published = published_models()
    assert {"Job", "PingBatch"} <= published  # the documents were read
    bare = [c for c in public_classes(ROOT) if not c.documented and c.name not in published]
    assert not bare, bare


def test_services_read_time_only_through_the_clock() -> None:
    """runtime/clock.py is the one place that asks the machine for the time or sleeps: a
    service given a ManualClock then runs on it entirely."""
    reads = ["time.time(", "time.monotonic(", "time.perf_counter(", "datetime.now("]
    reads += ["asyncio.sleep(", "time.sleep("]
    services = ("runtime", "jobs", "ingest", "streams", "api", "photo_worker", "notifier")
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for package in services
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != ROOT / "runtime" / "clock.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if any(read in line for read in reads)
    ]
    assert not found, found
