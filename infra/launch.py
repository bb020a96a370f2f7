"""What a component runs (its command), and running it as a local process. Where it runs
(`TELEMETRY_RUNTIME`: a local process, or a container of the component's image) is chosen
in infra/runtimes.py. Either way the stack gets a process it stops, kills and watches by
pid."""

from dataclasses import dataclass, field
from pathlib import Path

from infra import procs
from infra.config import StackConfig
from infra.procs import ProcessRef


@dataclass(frozen=True)
class Mount:
    """A host path a component's container sees at the same path: read-only unless it
    writes there."""

    path: Path
    writable: bool = False


@dataclass(frozen=True)
class Command:
    """One component's long-running process: its command line, environment and working dir,
    the image it runs from in a container (None: always a local process), and its log
    (`<logs>/<name>.log`)."""

    name: str
    image: str | None
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # The OS user it runs as when the stack is started by root (infra/procs.py): None for
    # the caller itself.
    user: str | None = None
    # What of the state dir its container is given (its log besides): nothing else, and
    # only what it writes is writable.
    mounts: tuple[Mount, ...] = ()


def log_path(config: StackConfig, command: Command) -> Path:
    return config.logs_dir / f"{command.name}.log"


def spawn_local(config: StackConfig, command: Command) -> ProcessRef:
    """The command as a local process (infra/runtimes.py chooses a container instead where
    the stack runs on containers)."""
    return procs.spawn(
        command.argv,
        log_path=log_path(config, command),
        env=command.env,
        cwd=command.cwd,
        user=command.user,
    )
