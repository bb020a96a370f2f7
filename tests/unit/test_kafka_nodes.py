"""Kafka's nodes as the stack declares them: one broker, or a KRaft cluster of three
(`up --kafka 3`) with three copies of every partition, two in sync for a write."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from infra import components, kafka, services
from infra.config import StackConfig
from infra.procs import StackError


def config(tmp_path: Path, brokers: int) -> StackConfig:
    return StackConfig(
        state_dir=tmp_path, kafka_brokers=brokers, kafka_port=30000, kafka_controller_port=30100
    )


def properties(config: StackConfig, node: int) -> dict[str, str]:
    text = kafka.write_properties(config, node).read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def test_one_broker_keeps_its_name_dirs_and_single_copies(tmp_path: Path) -> None:
    one = config(tmp_path, 1)
    assert kafka.names(one) == ["kafka"]
    assert kafka.data_dir(one) == tmp_path / "kafka" / "data"
    assert one.kafka_bootstrap == "127.0.0.1:30000"
    p = properties(one, 1)
    assert p["controller.quorum.voters"] == "1@127.0.0.1:30100"
    assert p["min.insync.replicas"] == "1" and p["default.replication.factor"] == "1"


def test_each_node_of_a_cluster_is_a_broker_and_a_voter_on_its_own_ports(tmp_path: Path) -> None:
    three = config(tmp_path, 3)
    assert kafka.names(three) == ["kafka-1", "kafka-2", "kafka-3"]
    assert three.kafka_bootstrap == "127.0.0.1:30000,127.0.0.1:30001,127.0.0.1:30002"
    voters = "1@127.0.0.1:30100,2@127.0.0.1:30101,3@127.0.0.1:30102"
    dirs = set()
    for node in (1, 2, 3):
        p = properties(three, node)
        assert p["node.id"] == str(node)
        assert p["controller.quorum.voters"] == voters
        assert p["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{30000 + node - 1},CONTROLLER://127.0.0.1:{30100 + node - 1}"
        )
        assert p["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{30000 + node - 1}"
        dirs.add(p["log.dirs"])
        # Three copies, a write acknowledged once two have it, never an unclean leader;
        # Kafka's own topics (consumer offsets, transactions) likewise.
        assert p["default.replication.factor"] == "3" and p["min.insync.replicas"] == "2"
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["unclean.leader.election.enable"] == "false"
    assert len(dirs) == 3


def test_two_brokers_are_refused(tmp_path: Path) -> None:
    # Two voters cannot lose one, and two copies with two in sync stop writes on any loss.
    with pytest.raises(ValidationError, match="two brokers survive no loss"):
        config(tmp_path, 2)


def test_a_stack_keeps_the_broker_count_it_was_made_with(tmp_path: Path) -> None:
    kafka.check_broker_count(config(tmp_path, 3))
    kafka.check_broker_count(config(tmp_path, 3))
    with pytest.raises(StackError, match="made with 3 broker"):
        kafka.check_broker_count(config(tmp_path, 1))
    # A stack made before the count was recorded has one broker's data dir.
    older = tmp_path / "older"
    (older / "kafka" / "data").mkdir(parents=True)
    (older / "kafka" / "data" / "meta.properties").write_text("")
    kafka.check_broker_count(config(older, 1))
    with pytest.raises(StackError, match="--kafka 1"):
        kafka.check_broker_count(config(older, 3))


def test_a_clusters_brokers_are_supervised_and_awaited_by_every_client(tmp_path: Path) -> None:
    three = config(tmp_path, 3)
    declared = {c.name: c for c in components.components(three, lambda _: None)}
    brokers = ("kafka-1", "kafka-2", "kafka-3")
    assert all(declared[b].supervised and declared[b].after == () for b in brokers)
    for name in ("ingest-1", "streams-1", "api-1", "photo-worker-1", "notifier-1"):
        assert set(brokers) <= set(declared[name].after) and "kafka" not in declared[name].after
    # A lone broker is a data store: an operator's, as PostgreSQL is.
    one = {c.name: c for c in components.components(config(tmp_path, 1), lambda _: None)}
    assert not one["kafka"].supervised and "kafka" in one["ingest-1"].after


def test_the_stream_makes_its_own_topics_with_the_stacks_copies(tmp_path: Path) -> None:
    [spec] = [s for s in services.specs(config(tmp_path, 3)) if s.module == "streams"]
    assert spec.env["STREAMS_TOPIC_REPLICATION_FACTOR"] == "3"
