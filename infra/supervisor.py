"""The supervisor: a process of the stack that restarts a service process that died (a
crash, kill -9) within seconds, with backoff, and stops trying after repeated crashes
(`status` then says so). A process that is alive but stuck (its /healthz fails several
looks in a row: a consumer whose task died, a batch that cannot be written) is killed and
restarted the same way. It acts only on what the state file says runs and is supervised:
a component stopped through the stack is forgotten first, so it is never brought back."""

import logging
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

from infra import logs
from infra.config import REPO_ROOT, StackConfig
from infra.launch import Command
from infra.procs import ProcessRef, StackError

NAME = "supervisor"
# It also rotates the stack's logs (infra/logs.py), looking this often.
ROTATE_EVERY_S = 10.0
log = logging.getLogger("supervisor")


def config_path(config: StackConfig) -> Path:
    """The running stack's configuration, written by `up` for the supervisor to read."""
    return config.run_dir / "stack-config.json"


@dataclass
class _Track:
    started_at: float
    quick_exits: int = 0
    restart_at: float | None = None
    failed_looks: int = 0
    next_look: float = 0.0


@dataclass
class RestartPolicy:
    """When to start a dead process again. The first restart is at once; each further exit
    that came soon after its start doubles the wait, and after `max_quick_exits` of those
    in a row it gives up. A process that ran `stable_after_s` starts the count afresh."""

    max_quick_exits: int = 5
    stable_after_s: float = 30.0
    first_backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    # A live process is stuck when its liveness probe fails this many looks in a row,
    # `look_every_s` apart, counted once it has had `startup_grace_s` to come up: long
    # enough that a busy process is not taken for a stuck one.
    stuck_after_looks: int = 4
    look_every_s: float = 5.0
    startup_grace_s: float = 30.0
    _tracks: dict[str, _Track] = field(default_factory=dict)

    def alive(self, name: str, now: float) -> None:
        # A process found running that we did not start: count its life from now.
        self._tracks.setdefault(name, _Track(started_at=now))

    def exited(self, name: str, now: float) -> float | None:
        """When to start it again (a time, maybe now), or None to give up."""
        track = self._tracks.setdefault(name, _Track(started_at=now))
        if track.restart_at is not None:
            return track.restart_at
        if now - track.started_at >= self.stable_after_s:
            track.quick_exits = 0
        track.quick_exits += 1
        if track.quick_exits > self.max_quick_exits:
            return None
        if track.quick_exits == 1:
            delay = 0.0
        else:
            delay = min(self.first_backoff_s * 2 ** (track.quick_exits - 2), self.max_backoff_s)
        track.restart_at = now + delay
        return track.restart_at

    def started(self, name: str, now: float) -> None:
        track = self._tracks.setdefault(name, _Track(started_at=now))
        track.started_at = now
        track.restart_at = None
        track.failed_looks = 0

    def look_due(self, name: str, now: float) -> bool:
        """Time to probe a live process: past its start-up grace and its next look."""
        track = self._tracks.setdefault(name, _Track(started_at=now))
        return now >= track.started_at + self.startup_grace_s and now >= track.next_look

    def looked(self, name: str, now: float, healthy: bool) -> bool:
        """Records a probe's answer; True when the process is stuck (kill it)."""
        track = self._tracks.setdefault(name, _Track(started_at=now))
        track.next_look = now + self.look_every_s
        track.failed_looks = 0 if healthy else track.failed_looks + 1
        return track.failed_looks >= self.stuck_after_looks

    def forget(self, name: str) -> None:
        self._tracks.pop(name, None)

    def keep_only(self, names: set[str]) -> None:
        """Forgets what is no longer recorded (stopped through the stack, scaled away)."""
        for name in set(self._tracks) - names:
            del self._tracks[name]


class Supervised(Protocol):
    """A process as the stack's state file records it."""

    @property
    def ref(self) -> ProcessRef: ...

    @property
    def supervised(self) -> bool: ...

    @property
    def gave_up(self) -> bool: ...


class Probed(Protocol):
    """A component, for its liveness probe (None: it has none)."""

    @property
    def live(self) -> Callable[[], bool] | None: ...


class Restarts(Protocol):
    """What the supervisor acts on (the stack, infra/stack.py): what runs, and the three
    things it may do to a process. Each operation acts only if the process is still the
    one recorded (`ref`), so a process an operator restarted meanwhile is left alone."""

    @property
    def records(self) -> Mapping[str, Supervised]: ...

    @property
    def components(self) -> Mapping[str, Probed]: ...

    def kill_stuck(self, name: str, stuck: ProcessRef) -> None:
        """SIGKILLs a live process that fails its probe; the next look restarts it."""
        ...

    def give_up(self, name: str, dead: ProcessRef) -> None:
        """Records that a process crashing again and again is not restarted any more."""
        ...

    def restart(self, name: str, dead: ProcessRef) -> bool:
        """Starts a dead process again; False when that is no longer the supervisor's to do
        (stopped meanwhile, restarted by someone else). StackError if it cannot start."""
        ...


def supervise_once(stack: Restarts, policy: RestartPolicy, now: float) -> None:
    """One look at every supervised process: restart the dead ones that are due, and kill
    the stuck ones (alive, failing their liveness probe) so that the next look restarts
    them as it would a crash."""
    records = stack.records
    policy.keep_only(set(records))
    for name, record in records.items():
        if not record.supervised or record.gave_up:
            continue
        if record.ref.alive():
            policy.alive(name, now)
            component = stack.components.get(name)
            probe = component.live if component is not None else None
            stuck = (
                probe is not None
                and policy.look_due(name, now)
                and policy.looked(name, now, probe())
            )
            if stuck:
                log.error(
                    "%s (pid %d) failed its liveness probe %d looks in a row: stuck,"
                    " killed to be restarted",
                    name,
                    record.ref.pid,
                    policy.stuck_after_looks,
                )
                # SIGKILL: a stuck process may not act on a polite signal either.
                stack.kill_stuck(name, record.ref)
            continue
        due = policy.exited(name, now)
        if due is None:
            log.error("%s keeps crashing: not restarted any more (see its log)", name)
            stack.give_up(name, record.ref)
            policy.forget(name)
        elif now >= due:
            try:
                if not stack.restart(name, record.ref):
                    continue  # stopped meanwhile, restarted by someone else, port still held
                log.warning("%s (pid %d) died: restarted", name, record.ref.pid)
            except StackError as exc:
                # It could not even be started (its configuration, a missing binary): that
                # counts as one more quick crash, so the waits grow and it is given up on.
                log.error("%s could not be started again: %s", name, exc)
            policy.started(name, now)


# How often the supervisor looks at every process.
INTERVAL_S = 0.5


def run(
    config: StackConfig, open_stack: Callable[[], Restarts], interval_s: float = INTERVAL_S
) -> None:
    """Looks every `interval_s` until SIGTERM or SIGINT. `open_stack` reads the stack
    afresh each round: `telemetry scale` changes the components."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    policy = RestartPolicy()
    log.info("supervising the stack in %s", config.state_dir)
    next_rotation = 0.0
    while not stopping:
        try:
            supervise_once(open_stack(), policy, time.monotonic())
            if time.monotonic() >= next_rotation:
                next_rotation = time.monotonic() + ROTATE_EVERY_S
                for name in logs.rotate_all(config.logs_dir, config.log_max_bytes, config.log_keep):
                    log.info("rotated %s", name)
        except Exception:
            # A bad moment (a file being replaced, a port still held) must not end the
            # supervision: the next look tries again.
            log.exception("supervision round failed")
        time.sleep(interval_s)
    log.info("supervisor stopped")


def command(config: StackConfig) -> Command:
    # A local process on either runtime: it starts the others, as an engine's restart
    # policy would.
    argv = [sys.executable, "-m", "infra.supervise", str(config_path(config))]
    return Command(NAME, None, argv, cwd=REPO_ROOT)
