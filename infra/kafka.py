"""Apache Kafka in KRaft mode from Maven Central's jars: one node, or a cluster of nodes each
a broker and a controller voter (`up --kafka 3`, docs/ha.md)."""

import asyncio
import base64
import contextlib
import uuid
from collections.abc import Callable
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


def nodes(config: StackConfig) -> range:
    return range(1, config.kafka_brokers + 1)


def name(config: StackConfig, node: int) -> str:
    """The component's name: `kafka` alone, `kafka-1`... in a cluster."""
    return "kafka" if config.kafka_brokers == 1 else f"kafka-{node}"


def names(config: StackConfig) -> list[str]:
    return [name(config, node) for node in nodes(config)]


def root(config: StackConfig) -> Path:
    return config.state_dir / "kafka"


def node_dir(config: StackConfig, node: int) -> Path:
    return root(config) if config.kafka_brokers == 1 else root(config) / f"node-{node}"


def data_dir(config: StackConfig, node: int = 1) -> Path:
    return node_dir(config, node) / "data"


def properties_path(config: StackConfig, node: int = 1) -> Path:
    return node_dir(config, node) / "server.properties"


def cluster_id_path(config: StackConfig) -> Path:
    """Every node of a cluster is formatted with the same id."""
    return root(config) / "cluster-id"


def broker_port(config: StackConfig, node: int) -> int:
    return config.kafka_port + node - 1


def controller_port(config: StackConfig, node: int) -> int:
    return config.kafka_controller_port + node - 1


def replication_factor(config: StackConfig) -> int:
    """Three copies of every partition in a cluster (one broker may be lost, or down for
    an upgrade, while another is slow); one when there is one broker."""
    return min(3, config.kafka_brokers)


def min_insync_replicas(config: StackConfig) -> int:
    """An acks=all write is on this many brokers before it is acknowledged: two of three,
    so a broker lost for good takes no acknowledged record with it, and writes go on
    while one broker is down."""
    return 2 if config.kafka_brokers >= 3 else 1


def write_properties(config: StackConfig, node: int = 1) -> Path:
    path = properties_path(config, node)
    path.parent.mkdir(parents=True, exist_ok=True)
    voters = ",".join(f"{n}@127.0.0.1:{controller_port(config, n)}" for n in nodes(config))
    copies, insync = replication_factor(config), min_insync_replicas(config)
    port, controller = broker_port(config, node), controller_port(config, node)
    path.write_text(
        "\n".join(
            [
                # Combined mode: every node is a broker and a voter of the controller quorum.
                "process.roles=broker,controller",
                f"node.id={node}",
                f"controller.quorum.voters={voters}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={data_dir(config, node)}",
                # Internal topics (offsets, transactions) as many copies as ours; on one
                # node they cannot have more replicas than that.
                f"offsets.topic.replication.factor={copies}",
                f"transaction.state.log.replication.factor={copies}",
                f"transaction.state.log.min.isr={insync}",
                f"share.coordinator.state.topic.replication.factor={copies}",
                f"share.coordinator.state.topic.min.isr={insync}",
                # Topics a client creates (Faust's own) get the same guarantees as ours.
                f"default.replication.factor={copies}",
                f"min.insync.replicas={insync}",
                # A replica that missed acknowledged records never becomes the leader.
                "unclean.leader.election.enable=false",
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


def format_command(config: StackConfig, cluster_id: str, node: int = 1) -> list[str]:
    """Formats a node's KRaft metadata dir for `cluster_id`."""
    properties = str(properties_path(config, node))
    return _java(
        config, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", properties,
        heap_mb=256,
    )  # fmt: skip


def new_cluster_id(random: Callable[[], uuid.UUID] = uuid.uuid4) -> str:
    """A random UUID, base64url without padding, as Kafka's own `random-uuid` writes one.
    Like Kafka's `Uuid.randomUuid`, it never begins with '-': the storage tool's argument
    parser would read such an id as an option (one in 64 ids did, and failed a CI run)."""
    while True:
        made = base64.urlsafe_b64encode(random().bytes).rstrip(b"=").decode()
        if not made.startswith("-"):
            return made


def cluster_id(config: StackConfig) -> str:
    """The cluster's id, made once."""
    path = cluster_id_path(config)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(new_cluster_id())
    return path.read_text().strip()


def check_broker_count(config: StackConfig) -> None:
    """A stack keeps the broker count it was made with: the controller quorum's voters are
    fixed in every node's configuration, and one broker's records have no copies to
    spread. The count is recorded when the first node is formatted."""
    path = root(config) / "brokers"
    if path.exists():
        made = int(path.read_text())
    elif (root(config) / "data" / "meta.properties").exists():
        made = 1  # made before the count was recorded
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(str(config.kafka_brokers))
        return
    if made != config.kafka_brokers:
        raise StackError(
            f"the Kafka in {root(config)} was made with {made} broker(s), not "
            f"{config.kafka_brokers}: start it with `--kafka {made}`, or remove "
            f"{config.state_dir} for a new stack"
        )


def format_storage(config: StackConfig, node: int = 1) -> bool:
    """Formats a node's KRaft metadata dir once; returns True if it did."""
    check_broker_count(config)
    if (data_dir(config, node) / "meta.properties").exists():
        return False
    run(format_command(config, cluster_id(config), node))
    return True


def prepare(config: StackConfig, node: int = 1) -> None:
    java_binary()
    write_properties(config, node)
    format_storage(config, node)
    own_tree(data_dir(config, node), APP_USER)


def command(config: StackConfig, node: int = 1) -> Command:
    properties = properties_path(config, node)
    argv = _java(config, "kafka.Kafka", str(properties), heap_mb=config.kafka_heap_mb)
    # The services' user: no secret is in its files (the listener is PLAINTEXT).
    mounts = (Mount(properties), Mount(data_dir(config, node), writable=True))
    return Command(name(config, node), "kafka", argv, user=APP_USER, mounts=mounts)


async def _create_topics(bootstrap: str, wanted: list[tuple[str, int]], copies: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    await asyncio.wait_for(admin.start(), 15)
    try:
        existing = set(await asyncio.wait_for(admin.list_topics(), 15))
        new = [
            NewTopic(name, parts, copies, topic_configs=TOPIC_CONFIGS.get(name, {}))
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
        asyncio.run(_create_topics(config.kafka_bootstrap, wanted, replication_factor(config)))
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


def ready(config: StackConfig, node: int = 1) -> bool:
    """This node answers as a broker (a cluster's node only once the quorum has a leader)."""
    return asyncio.run(_broker_ready(f"127.0.0.1:{broker_port(config, node)}"))


async def _brokers_registered(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), 5)
        return len(cluster["brokers"])
    except (KafkaError, TimeoutError, OSError):
        return 0
    finally:
        with contextlib.suppress(KafkaError, TimeoutError, OSError):
            await asyncio.wait_for(admin.close(), 5)


def all_registered(config: StackConfig) -> bool:
    """Every broker of the cluster is known to the controller: a topic with three
    replicas can be made."""
    return asyncio.run(_brokers_registered(config.kafka_bootstrap)) >= config.kafka_brokers
