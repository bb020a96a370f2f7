"""Where a Python process's time goes: py-spy samples its stacks while a load runs, and the
samples are summed per function (self and inclusive) and per area of the code."""

import collections
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from infra.procs import StackError

# The area of a frame, from its file: the first pattern that matches names it. Time in C
# (uvloop, system calls, pydantic-core) shows on the Python frame that called it.
AREAS = (
    ("HTTP server (uvicorn, httptools)", re.compile(r"uvicorn/|httptools")),
    ("FastAPI and Starlette", re.compile(r"fastapi/|starlette/")),
    ("Kafka client (aiokafka)", re.compile(r"aiokafka/")),
    ("Redis client", re.compile(r"redis/")),
    ("JWT (PyJWT, cryptography)", re.compile(r"jwt/|cryptography/")),
    ("pydantic", re.compile(r"pydantic")),
    ("metrics (prometheus-client)", re.compile(r"prometheus_client/")),
    ("stream framework (Faust, mode)", re.compile(r"faust/|mode/")),
    ("PostgreSQL client (psycopg)", re.compile(r"psycopg")),
    ("H3", re.compile(r"h3/")),
    (
        "our code (ingest/, streams/, runtime/, schemas/)",
        re.compile(r"^(.*/)?(ingest|streams|runtime|schemas)/"),
    ),
    ("event loop and sockets (asyncio, uvloop)", re.compile(r"asyncio/|uvloop")),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^:()]*):\d+\)$")


@dataclass(frozen=True)
class Profile:
    """A py-spy profile summed by function and by area, as percentages of the samples."""

    samples: int
    self_pct: list[tuple[str, float]]  # function, share of samples it was the leaf of
    inclusive_pct: list[tuple[str, float]]  # function, share of samples it was on
    area_pct: list[tuple[str, float]]  # area, share of samples whose leaf is in it

    def as_dict(self) -> dict[str, object]:
        return {
            "samples": self.samples,
            "self_pct": self.self_pct,
            "inclusive_pct": self.inclusive_pct,
            "area_pct": self.area_pct,
        }


def record(pid: int, seconds: int, out: Path, rate_hz: int = 200) -> Path:
    """py-spy's raw (collapsed) stacks of `pid` over `seconds`, into `out`."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate",
         str(rate_hz), "--format", "raw", "--output", str(out), "--nonblocking"],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not out.exists():
        raise StackError(f"py-spy failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return out


def _name(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = re.sub(r".*site-packages/", "", match["file"])
    return f"{match['func']} ({path})"


def _area(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match["file"] if match else frame
    for area, pattern in AREAS:
        if pattern.search(path):
            return area
    return "other"


def summarise(raw: Path, top: int = 15) -> Profile:
    """Sums collapsed stacks ("frame;frame;... count" per line)."""
    own: collections.Counter[str] = collections.Counter()
    on: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        areas[_area(stack.split(";")[-1])] += n
        for frame in set(frames):
            on[frame] += n

    def shares(counter: collections.Counter[str], k: int) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(k)]

    if total == 0:
        raise StackError(f"no samples in {raw}")
    return Profile(total, shares(own, top), shares(on, top * 3), shares(areas, len(AREAS) + 1))
