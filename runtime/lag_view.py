"""One look at consumer groups' lag, for `telemetry lag` and ops views: per group and
partition the end offset, the committed offset, the lag in messages and in seconds, and a
status judged over the last looks (runtime/lag_status.py)."""

import asyncio
from dataclasses import asdict, dataclass

from runtime.kafka_lag import PartitionLag, consumer_group_lag, group_members
from runtime.lag_status import LagWindow, Sample, Status
from schemas.topics import CONSUMER_GROUPS


@dataclass(frozen=True)
class PartitionRow:
    """One partition's lag with its status, as the CLI, the api and the ops page show it."""

    group: str
    topic: str
    partition: int
    end_offset: int
    committed_offset: int | None
    lag_messages: int
    lag_seconds: float
    status: Status


@dataclass(frozen=True)
class Look:
    """One look at Kafka: every partition's lag, and how many members each group has."""

    partitions: list[PartitionLag]
    members: dict[str, int]  # group -> consumers now


async def look(bootstrap: str, groups: dict[str, tuple[str, ...]] = CONSUMER_GROUPS) -> Look:
    partitions: list[PartitionLag] = []
    members: dict[str, int] = {}
    for group, group_topics in groups.items():
        partitions += await consumer_group_lag(bootstrap, group, list(group_topics))
        members[group] = await group_members(bootstrap, group)
    return Look(partitions, members)


def take_look(bootstrap: str) -> Look:
    return asyncio.run(look(bootstrap))


def judge(window: LagWindow, seen: Look) -> list[PartitionRow]:
    """Adds the look to the window; every partition with its status over the window."""
    rows = []
    for p in seen.partitions:
        key = (p.group, p.topic, p.partition)
        window.add(key, Sample(p.committed_offset, p.lag_messages))
        status = window.status(key, group_has_members=seen.members.get(p.group, 0) > 0)
        rows.append(
            PartitionRow(
                p.group,
                p.topic,
                p.partition,
                p.end_offset,
                p.committed_offset,
                p.lag_messages,
                round(p.lag_seconds, 1),
                status,
            )
        )
    return rows


def as_json(rows: list[PartitionRow], members: dict[str, int]) -> dict[str, object]:
    worst = {group: Status.OK for group in members}
    order = list(Status)
    for row in rows:
        if order.index(row.status) > order.index(worst[row.group]):
            worst[row.group] = row.status
    return {
        "groups": {
            group: {
                "members": members[group],
                "status": worst[group],
                "lag_messages": sum(r.lag_messages for r in rows if r.group == group),
                "lag_seconds": max((r.lag_seconds for r in rows if r.group == group), default=0),
            }
            for group in members
        },
        "partitions": [asdict(row) for row in rows],
    }
