"""Runs a component's process in its image through testcontainers, which drives the stack's
container engine (Podman's Docker-compatible API, engine.py).

The container shares the host's network, process and IPC namespaces, so the stack's ports,
pids and signals mean what they mean for a local process: `stop`, `kill -9` and SIGSTOP in
the fault tests reach the service itself, and the supervisor sees it exit. What the
container does not share is the filesystem: the service runs the image's binaries and code,
as its component's user (never root), and sees of the state dir only its log and the paths
its command declares (`Command.mounts`), each at its own path so that the configuration the
stack writes names the same files inside, read-only unless the component writes there."""

import contextlib
import hashlib
import os
import sys

from infra import kafka, launch
from infra.config import REPO_ROOT, StackConfig
from infra.containers import engine, images
from infra.procs import ProcessRef, StackError, start_ticks, user_ids

# Where the images hold what a command line names on the host (the Dockerfiles put them
# there): the app image's Python and project, the Kafka image's jars and logging config.
IMAGE_HOME = "/opt/telemetry"
IMAGE_PYTHON = f"{IMAGE_HOME}/venv/bin/python"
IMAGE_KAFKA_LIB = "/opt/kafka/lib"
IMAGE_KAFKA_LOG4J = f"{IMAGE_HOME}/infra/kafka/log4j2.yaml"
# The shell opens the log (as the service's user) and becomes the service: the container's
# process is the service's own, and a failed exec is in the log too.
LOG_AND_EXEC = 'exec >>"$1" 2>&1; shift; exec "$@"'


def in_image(config: StackConfig, text: str) -> str:
    """`text` (an argument, a value) with the host's paths replaced by the image's."""
    for host, image in (
        (sys.executable, IMAGE_PYTHON),
        (str(kafka.LOG4J_CONFIG), IMAGE_KAFKA_LOG4J),
        (str(config.kafka_lib_dir), IMAGE_KAFKA_LIB),
    ):
        text = text.replace(host, image)
    return text


def container_name(config: StackConfig, process: str) -> str:
    """Unique per stack (tests run several at once) and per process."""
    stack = hashlib.sha256(str(config.state_dir).encode()).hexdigest()[:8]
    return f"telemetry-{stack}-{process}"


def spawn(config: StackConfig, command: launch.Command) -> ProcessRef:
    """Starts `command` in a new container of its image; returns the service process."""
    # Imported here: only the container runtime needs testcontainers (a dev dependency).
    from docker.errors import NotFound  # type: ignore[import-untyped]
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    # Ryuk would remove the containers when this process exits; the stack's state file
    # owns them instead (`down`), as it owns its local processes. Its image is not here
    # either.
    testcontainers_config.ryuk_disabled = True
    assert command.image is not None
    ids = user_ids(command.user)
    log = launch.log_path(config, command)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if ids is not None:
        os.chown(log, *ids)
    name = container_name(config, command.name)
    argv = ["/bin/sh", "-c", LOG_AND_EXEC, "sh", str(log)]
    argv += [in_image(config, arg) for arg in command.argv]
    container = DockerContainer(
        images.reference(command.image),
        docker_client_kw={"environment": {"DOCKER_HOST": engine.docker_host(config)}},
        command=argv,  # type: ignore[arg-type]  # a list is passed through as argv
        env={key: in_image(config, value) for key, value in command.env.items()},
        name=name,
        # Its log and what it declares, nothing else of the state dir: no other component's
        # files, no secret it does not use, and only what it writes is writable.
        volumes=[(str(log), str(log), "rw")]
        + [(str(m.path), str(m.path), "rw" if m.writable else "ro") for m in command.mounts],
        network_mode="host",
        pid_mode="host",
        ipc_mode="host",
        auto_remove=True,
        working_dir=IMAGE_HOME if command.cwd == REPO_ROOT else str(command.cwd or "/"),
        user=f"{ids[0]}:{ids[1]}" if ids is not None else None,
    )
    # One of the same name left by a process that was killed, still being removed.
    with contextlib.suppress(NotFound):
        container.get_docker_client().client.containers.get(name).remove(force=True)
    container.start()
    wrapped = container.get_wrapped_container()
    wrapped.reload()
    pid = int(wrapped.attrs["State"]["Pid"])
    ticks = start_ticks(pid) if pid else None
    if ticks is None:
        raise StackError(f"{name} ({command.image}) exited at once; see {log}")
    return ProcessRef(pid, ticks)
