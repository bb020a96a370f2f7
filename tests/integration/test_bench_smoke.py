"""The benchmark harness end to end: the smoke scenario against the real stack."""

import json
from pathlib import Path

import psycopg
import pytest

from bench import harness
from infra import postgres
from infra.stack import Stack

pytestmark = pytest.mark.integration


def test_smoke_report_counts_match_what_the_database_stored(stack: Stack, tmp_path: Path) -> None:
    report = harness.run("smoke", stack, out_dir=tmp_path)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert "telemetry bench smoke" in (tmp_path / "summary.md").read_text()
    assert saved["fleet"]["accepted"] == report["fleet"]["accepted"] > 0
    assert saved["fleet"]["failed_batches"] == 0
    with psycopg.connect(postgres.dsn(stack.config, "primary")) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT ping_id) FROM pings WHERE driver_id LIKE %s",
            [report["driver_prefix"] + "-%"],
        ).fetchone()
    assert row is not None
    assert row[0] == row[1] == saved["fleet"]["accepted"] == saved["stored_pings"]
    assert saved["consistent"] is True
    assert saved["samples"], "the sampler recorded CPU and lag"
    assert any("ingest-1" in s["cpu_pct"] for s in saved["samples"])
