"""Starting, finding and stopping the stack's processes, by pid and never by name."""

import contextlib
import os
import pwd
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# Who runs what when the stack is started by root (nothing runs as root; docs/operations.md,
# "Who runs as whom"). PostgreSQL and PgBouncer refuse root: Debian's postgresql package
# makes their user. Our services, the ops exporter and Kafka run as a system user of their
# own, which `telemetry install` creates; it can read none of the stack's secrets' files
# (the JWT signing key, the password files).
DATABASE_USER = "postgres"
APP_USER = "telemetry"
# The daemons run as the users their Debian packages make (in our images, with fixed uids).
REDIS_USER = "redis"
HAPROXY_USER = "haproxy"
PROMETHEUS_USER = "prometheus"
NGINX_USER = "www-data"


class StackError(Exception):
    """Something the operator must fix; the message says what failed and how to fix it."""


@dataclass(frozen=True)
class ProcessRef:
    """A pid plus its kernel start time: a recycled pid is never mistaken for ours."""

    pid: int
    start_ticks: int

    def alive(self) -> bool:
        return start_ticks(self.pid) == self.start_ticks


def start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def write_private(path: Path, text: str) -> None:
    """Writes a file readable by its owner only (secrets: passwords, DSNs, keys), created
    with that mode so it is never readable by others, even for a moment."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write(text)


def running_as_root() -> bool:
    return os.geteuid() == 0


def user_ids(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) to drop to: `user`'s when we are root, else None (run as ourselves)."""
    if user is None or not running_as_root():
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError as exc:
        how = (
            "install Debian's postgresql package"
            if user == DATABASE_USER
            else "run 'telemetry install' (it creates it)"
        )
        raise StackError(f"running as root needs the '{user}' OS user: {how}") from exc
    return entry.pw_uid, entry.pw_gid


def chown_for(path: Path, user: str) -> None:
    """Gives `path` to `user` when we are root (a file or dir only that user's process uses)."""
    ids = user_ids(user)
    if ids is not None:
        os.chown(path, *ids)


def own_tree(path: Path, user: str) -> None:
    """Makes `path` (created if missing) and everything in it `user`'s when we are root: a
    dir only that user's process writes, where we may have put files (its configuration, or
    a state dir from before it ran as that user)."""
    path.mkdir(parents=True, exist_ok=True)
    ids = user_ids(user)
    if ids is None:
        return
    for root, dirs, files in os.walk(path):
        for entry in (root, *(os.path.join(root, name) for name in (*dirs, *files))):
            if os.lstat(entry).st_uid != ids[0]:
                os.chown(entry, *ids, follow_symlinks=False)


def _demote(uid: int, gid: int) -> Callable[[], None]:
    def apply() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return apply


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: str | None = None,
) -> ProcessRef:
    """Start a long-running process in its own session, detached from ours, logging to a file."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ids = user_ids(user)
    full_env = dict(os.environ) | dict(env or {})
    if ids is not None:
        full_env["HOME"] = pwd.getpwuid(ids[0]).pw_dir
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_demote(*ids) if ids is not None else None,
        )
    ticks = start_ticks(proc.pid)
    if ticks is None:
        raise StackError(f"{argv[0]} exited at once; see {log_path}")
    return ProcessRef(proc.pid, ticks)


def run(
    argv: Sequence[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 300,
    cwd: Path | None = None,
) -> str:
    """Run a command to completion; StackError with its output if it fails."""
    ids = user_ids(user)
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=dict(os.environ) | dict(env or {}),
            timeout=timeout_s,
            cwd=cwd,
            preexec_fn=_demote(*ids) if ids is not None else None,
            check=False,
        )
    except FileNotFoundError as exc:
        raise StackError(f"{argv[0]} not found: {exc}") from exc
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{' '.join(argv)} did not finish in {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip()[-2000:]
        raise StackError(f"{' '.join(argv)} failed (exit {done.returncode}):\n{output}")
    return done.stdout


def stop(ref: ProcessRef, *, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
    """Signal the process, wait for it to exit, SIGKILL it (and its group) past the timeout."""
    if not ref.alive():
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(ref.pid, sig)
    if not wait_until(lambda: not ref.alive(), timeout_s):
        with contextlib.suppress(ProcessLookupError):
            os.kill(ref.pid, signal.SIGKILL)
        wait_until(lambda: not ref.alive(), 10.0)
    # spawn() made the process a session (and group) leader: whatever it left behind in its
    # group (helpers, forked workers) is ours to end too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(ref.pid, signal.SIGKILL)


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def ensure_port_free(port: int, what: str, env_var: str, grace_s: float = 5.0) -> None:
    # A process just killed may hold its port a moment longer: its main thread is a zombie
    # (so it counts as gone) while its other threads still exit, with the socket open.
    if port_open(port) and not wait_until(lambda: not port_open(port), grace_s, 0.05):
        raise StackError(
            f"port {port} for {what} is already in use by another process; "
            f"stop that process or choose another port with {env_var}=<port>"
        )


# Scratch stacks take ports from here: above the stack's default ports (15432 to 19196)
# and below the kernel's ephemeral range, where a port found free now can be taken a moment
# later as the local port of some outgoing connection (seen: api-2 unable to bind).
SCRATCH_PORTS = (20000, 32768)


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(span: int = 1) -> int:
    """A port free now, with the `span - 1` ports after it free too (for tests and
    ephemeral stacks; `ingest-N` listens on port + N - 1), outside the ephemeral range."""
    low, high = SCRATCH_PORTS[0], min(SCRATCH_PORTS[1], _ephemeral_low())
    for _ in range(10_000):
        port = random.randrange(low, high - span)
        if all(_bindable(p) for p in range(port, port + span)):
            return port
    raise StackError(f"no {span} free ports in a row between {low} and {high}")
