"""Summing py-spy's collapsed stacks: own and inclusive shares per function, and areas."""

from pathlib import Path

import pytest

from bench.profile import summarise
from infra.procs import StackError

RAW = """\
run (uvicorn/main.py:1);post_pings (ingest/app.py:10);check (ingest/ratelimit.py:99) 30
run (uvicorn/main.py:1);post_pings (ingest/app.py:10);send (/s/site-packages/aiokafka/p.py:5) 50
run (uvicorn/main.py:1);data_received (/x/site-packages/uvicorn/protocols/http.py:7) 20
"""


def test_shares_per_function_and_per_area(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text(RAW)
    profile = summarise(raw, top=5)
    assert profile.samples == 100
    assert profile.self_pct[0] == ("send (aiokafka/p.py)", 50.0)
    assert dict(profile.inclusive_pct)["post_pings (ingest/app.py)"] == 80.0
    assert dict(profile.inclusive_pct)["run (uvicorn/main.py)"] == 100.0
    areas = dict(profile.area_pct)
    assert areas["Kafka client (aiokafka)"] == 50.0
    assert areas["our code (ingest/, streams/, runtime/, schemas/)"] == 30.0
    assert areas["HTTP server (uvicorn, httptools)"] == 20.0


def test_no_samples_is_an_error_not_an_empty_profile(tmp_path: Path) -> None:
    raw = tmp_path / "raw.txt"
    raw.write_text("")
    with pytest.raises(StackError):
        summarise(raw)
