"""The lag status rules (runtime/lag_status.py), table-driven, and the `telemetry logs`
command on a state dir of its own."""

import asyncio
from pathlib import Path

import pytest

from api.ops import LagMonitor
from cli.main import main
from runtime.clock import ManualClock
from runtime.kafka_lag import PartitionLag
from runtime.lag_status import LagWindow, Sample, Status, evaluate
from runtime.lag_view import Look, as_json, judge


def window(*looks: tuple[int | None, int]) -> list[Sample]:
    return [Sample(committed, lag) for committed, lag in looks]


@pytest.mark.parametrize(
    ("looks", "members", "expected"),
    [
        # Caught up at some point of the window: OK, whatever else happened.
        (((10, 5), (12, 0), (12, 3)), True, Status.OK),
        (((10, 0),), False, Status.OK),
        # Committing, lag going down or up and down: OK.
        (((10, 50), (20, 40), (30, 45)), True, Status.OK),
        # Committing, but the lag grew in every interval: falling behind.
        (((10, 50), (20, 60), (30, 70)), True, Status.WARN),
        # Lag, and the committed offset never moved: stuck.
        (((10, 50), (10, 50), (10, 50)), True, Status.STALL),
        (((10, 50), (10, 60), (10, 70)), True, Status.STALL),
        (((None, 5), (None, 9)), True, Status.STALL),
        # Lag, and nobody in the group: stopped (even on one look).
        (((10, 50), (10, 50)), False, Status.STOP),
        (((None, 7),), False, Status.STOP),
        # The committed offset went backwards.
        (((30, 5), (20, 15), (25, 10)), True, Status.REWIND),
        # One look with lag and a live group: nothing to compare yet.
        (((10, 50),), True, Status.OK),
    ],
)
def test_lag_status_rules(
    looks: tuple[tuple[int | None, int], ...], members: bool, expected: Status
) -> None:
    assert evaluate(window(*looks), group_has_members=members) == expected


def test_a_status_needs_a_sample() -> None:
    with pytest.raises(ValueError):
        evaluate([], group_has_members=True)


def test_the_window_keeps_the_last_looks_only() -> None:
    lags = LagWindow(size=2)
    key = ("g", "t", 0)
    for committed, lag in ((1, 0), (5, 10), (5, 10)):
        lags.add(key, Sample(committed, lag))
    # The look with lag 0 has left the window: the last two never moved.
    assert lags.status(key, group_has_members=True) == Status.STALL


def test_the_json_view_gives_each_group_its_worst_partition() -> None:
    lags = LagWindow(size=3)

    def look(committed: int, end: int) -> Look:
        parts = [
            PartitionLag("streams", "pings.v1", 0, end, committed, end - committed, 4.0),
            PartitionLag("streams", "pings.v1", 1, 100, 100, 0, 0.0),
        ]
        return Look(parts, {"streams": 1, "photos": 0})

    for _ in range(3):
        rows = judge(lags, look(committed=40, end=90))
    view = as_json(rows, {"streams": 1, "photos": 0})
    assert view["groups"] == {
        "streams": {"members": 1, "status": "STALL", "lag_messages": 50, "lag_seconds": 4.0},
        "photos": {"members": 0, "status": "OK", "lag_messages": 0, "lag_seconds": 0},
    }
    statuses = [(p["partition"], p["status"]) for p in view["partitions"]]  # type: ignore[attr-defined]
    assert statuses == [(0, Status.STALL), (1, Status.OK)]


def test_logs_prints_each_process_of_a_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path
    (state / "logs").mkdir()
    (state / "logs" / "api-1.log").write_text("one\ntwo\nthree\n")
    (state / "logs" / "api-2.log").write_text("other\n")
    (state / "logs" / "api-photo.log").write_text("not an api process\n")
    monkeypatch.setenv("TELEMETRY_STATE_DIR", str(state))
    assert main(["logs", "api", "-n", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["api-1: two", "api-1: three", "api-2: other"]
    assert main(["logs", "api-2"]) == 0
    assert capsys.readouterr().out.splitlines() == ["other"]
    assert main(["logs", "nothing"]) == 1


async def test_the_api_shares_one_look_among_concurrent_requests_and_paces_them() -> None:
    looks = 0
    asked, answer = asyncio.Event(), asyncio.Event()

    async def looker(bootstrap: str) -> Look:
        nonlocal looks
        looks += 1
        asked.set()
        await answer.wait()  # Kafka answers when the test says so
        part = PartitionLag("streams", "pings.v1", 0, 100, 10, 90, 3.0)
        return Look([part], {"streams": 1})

    clock = ManualClock()
    monitor = LagMonitor("kafka:9092", window=3, min_interval_s=0.2, looker=looker, clock=clock)
    # 20 requests at once: the first looks, the others queue behind it while it does.
    requests = [asyncio.create_task(monitor.report()) for _ in range(20)]
    await asyncio.wait_for(asked.wait(), 5)
    answer.set()
    reports = await asyncio.gather(*requests)
    assert looks == 1 and all(r is reports[0] for r in reports)
    assert reports[0]["window"] == 1 and reports[0]["groups"]["streams"]["status"] == "OK"
    clock.advance(0.19)
    await monitor.report()
    assert looks == 1  # within the interval: the last look again
    clock.advance(0.01)  # the interval has passed
    again = await monitor.report()
    assert looks == 2 and again["window"] == 2
    assert again["groups"]["streams"]["status"] == "STALL"  # committed 10 both times
