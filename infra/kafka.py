"""One Apache Kafka node in KRaft mode (broker and controller) from Maven Central's jars."""

import asyncio
import contextlib
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from infra.config import StackConfig
from infra.install import java_binary
from infra.launch import Command, Mount
from infra.procs import APP_USER, StackError, own_tree, run
from schemas import topics

LOG4J_CONFIG = Path(__file__).resolve().parent / "kafka" / "log4j2.yaml"

# (topic, partitions). The driver-keyed topics share one partition count so that per-driver
# state (Faust tables with use_partitioner) lines up with the input partitions.
TOPICS = [
    (topics.PINGS, topics.DRIVER_TOPIC_PARTITIONS),
    (topics.POSITIONS, topics.DRIVER_TOPIC_PARTITIONS),
    (topics.JOB_EVENTS, topics.DRIVER_TOPIC_PARTITIONS),
    (topics.TASKS, topics.DRIVER_TOPIC_PARTITIONS),
    (topics.dlq(topics.PINGS), 3),
    (topics.dlq(topics.TASKS), 3),
    (topics.DEVICES, 1),
]
# Topics that are tables: the latest record of each key kept for good.
TOPIC_CONFIGS = {topics.DEVICES: {"cleanup.policy": "compact"}}


def data_dir(config: StackConfig) -> Path:
    return config.state_dir / "kafka" / "data"


def properties_path(config: StackConfig) -> Path:
    return config.state_dir / "kafka" / "server.properties"


def write_properties(config: StackConfig) -> Path:
    path = properties_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{config.kafka_controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{config.kafka_port},"
                f"CONTROLLER://127.0.0.1:{config.kafka_controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{config.kafka_port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data_dir(config)}",
                # One node: internal topics cannot have more replicas than that.
                "offsets.topic.replication.factor=1",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "num.partitions=12",
                # Consumer groups in tests and dev should not wait 3 s for a first rebalance.
                "group.initial.rebalance.delay.ms=0",
                # Topics are created by the stack with their partition counts (TOPICS), never by
                # a typo in a producer.
                "auto.create.topics.enable=false",
                "log.retention.hours=168",
                "",
            ]
        )
    )
    return path


def _java(config: StackConfig, main_class: str, *args: str, heap_mb: int) -> list[str]:
    return [
        # Found on the PATH, as java_binary() finds it (prepare checks it is there).
        "java",
        f"-Xmx{heap_mb}m",
        f"-Xms{min(heap_mb, 256)}m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={config.logs_dir}",
        "-cp",
        f"{config.kafka_lib_dir}/*",
        main_class,
        *args,
    ]


def format_command(config: StackConfig, cluster_id: str) -> list[str]:
    """Formats the KRaft metadata dir for `cluster_id`."""
    properties = str(properties_path(config))
    return _java(
        config, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", properties,
        heap_mb=256,
    )  # fmt: skip


def format_storage(config: StackConfig) -> bool:
    """Formats the KRaft metadata dir once; returns True if it did."""
    if (data_dir(config) / "meta.properties").exists():
        return False
    cluster_id = run(_java(config, "kafka.tools.StorageTool", "random-uuid", heap_mb=128)).strip()
    run(format_command(config, cluster_id.splitlines()[-1].strip()))
    return True


def prepare(config: StackConfig) -> None:
    java_binary()
    write_properties(config)
    format_storage(config)
    own_tree(data_dir(config), APP_USER)


def command(config: StackConfig) -> Command:
    properties = str(properties_path(config))
    argv = _java(config, "kafka.Kafka", properties, heap_mb=config.kafka_heap_mb)
    # The services' user: no secret is in its files (the listener is PLAINTEXT).
    mounts = (Mount(properties_path(config)), Mount(data_dir(config), writable=True))
    return Command("kafka", "kafka", argv, user=APP_USER, mounts=mounts)


async def _create_topics(bootstrap: str, wanted: list[tuple[str, int]]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await asyncio.wait_for(admin.start(), 15)
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), 15))
        new = [
            NewTopic(name, parts, 1, topic_configs=TOPIC_CONFIGS.get(name, {}))
            for name, parts in wanted
            if name not in existing
        ]
        if new:
            # Another `up` may have created them in the meantime.
            with contextlib.suppress(TopicAlreadyExistsError):
                await asyncio.wait_for(admin.create_topics(new), 15)
    finally:
        await asyncio.wait_for(admin.close(), 10)


def create_topics(config: StackConfig, wanted: list[tuple[str, int]] = TOPICS) -> None:
    try:
        asyncio.run(_create_topics(config.kafka_bootstrap, wanted))
    except (KafkaError, TimeoutError, OSError) as exc:
        raise StackError(
            f"could not create Kafka topics on {config.kafka_bootstrap}: {exc!r}"
        ) from exc


async def _broker_ready(bootstrap: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        await asyncio.wait_for(admin.list_topics(), 5)
        return True
    except (KafkaError, TimeoutError, OSError):
        return False
    finally:
        with contextlib.suppress(KafkaError, TimeoutError, OSError):
            await asyncio.wait_for(admin.close(), 5)


def ready(config: StackConfig) -> bool:
    return asyncio.run(_broker_ready(config.kafka_bootstrap))
