"""Starting a component's command on the stack's runtime (`TELEMETRY_RUNTIME`): a container of
its image (infra/containers/run.py) or a local process (infra/launch.py). Above both, so
that neither imports the other."""

from infra import launch
from infra.config import StackConfig
from infra.containers import run
from infra.launch import Command
from infra.procs import ProcessRef


def spawn(config: StackConfig, command: Command) -> ProcessRef:
    """The command's process; a command with no image is a local process on either
    runtime (the supervisor, the container engine's API)."""
    if config.runtime == "containers" and command.image is not None:
        return run.spawn(config, command)
    return launch.spawn_local(config, command)
