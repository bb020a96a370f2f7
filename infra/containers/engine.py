"""Podman, the container engine on machines without a Docker engine (docs/containers.md):
its configuration for our machines, its CLI, and its Docker-compatible API service, which
testcontainers drives. The configuration is our own file (CONTAINERS_CONF): the machine's
is left alone."""

import contextlib
import resource
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx

from infra import launch
from infra.config import StackConfig
from infra.install import ensure_debian_packages
from infra.launch import Command
from infra.procs import StackError, stop, wait_until

NAME = "container-engine"
PODMAN = "/usr/bin/podman"
PACKAGES = {
    "podman": Path(PODMAN),
    # crun fails on our machines' hybrid cgroups; runc works.
    "runc": Path("/usr/sbin/runc"),
}
# runc refuses a process limit above about 64k here, whatever the hard limit says
# (measured: 32,768 starts, 65,536 and the hard limit of 96,364 do not).
MAX_NPROC = 32768


def ensure_installed() -> list[str]:
    return ensure_debian_packages(PACKAGES)


def conf_path(config: StackConfig) -> Path:
    return config.cache_dir / "podman" / "containers.conf"


def render_conf() -> str:
    """Podman's defaults ask for limits above what our machines may raise (the process
    would not start): the containers get the current hard limits instead."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    if nproc == resource.RLIM_INFINITY or nproc > MAX_NPROC:
        nproc = MAX_NPROC
    return (
        "# Written by the stack (infra/containers/engine.py).\n"
        "[containers]\n"
        f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
    )


def env(config: StackConfig) -> dict[str, str]:
    """The environment of every podman command (and of the API service)."""
    path = conf_path(config)
    text = render_conf()
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"CONTAINERS_CONF": str(path)}


def socket_path(config: StackConfig) -> Path:
    return config.run_dir / "podman.sock"


def docker_host(config: StackConfig) -> str:
    """The API's address, as DOCKER_HOST says it to Docker clients (testcontainers)."""
    return f"unix://{socket_path(config)}"


def prepare(config: StackConfig) -> None:
    socket_path(config).parent.mkdir(parents=True, exist_ok=True)
    socket_path(config).unlink(missing_ok=True)  # left by a service that was killed


def command(config: StackConfig) -> Command:
    argv = [PODMAN, "system", "service", "--time=0", docker_host(config)]
    return Command(NAME, None, argv, env(config))


@contextlib.contextmanager
def serving(config: StackConfig) -> Iterator[None]:
    """The API for containers started outside a stack (a test's own Kafka and ingest), on
    the container runtime; nothing on the processes runtime."""
    if config.runtime != "containers":
        yield
        return
    prepare(config)
    api = command(config)
    ref = launch.spawn_local(config, api)
    try:
        wait_until(lambda: ready(config) or not ref.alive(), 60, 0.1)
        if not ready(config):
            log = launch.log_path(config, api)
            raise StackError(f"Podman's API did not answer; {log} says:\n{log.read_text()[-1000:]}")
        yield
    finally:
        stop(ref)


def ready(config: StackConfig) -> bool:
    # Listening at all, first: httpcore leaves the socket of a refused Unix connection
    # open, and the stack polls this until the API answers.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(socket_path(config)))
        except OSError:
            return False
    transport = httpx.HTTPTransport(uds=str(socket_path(config)))
    try:
        with httpx.Client(transport=transport, timeout=2) as client:
            return client.get("http://podman/_ping").text == "OK"
    except httpx.HTTPError:
        return False
