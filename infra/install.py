"""Installs what the stack needs and is missing: Debian packages and Kafka's jars."""

import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from infra.config import REPO_ROOT, StackConfig
from infra.procs import (
    APP_USER,
    DATABASE_USER,
    HAPROXY_USER,
    NGINX_USER,
    PROMETHEUS_USER,
    REDIS_USER,
    StackError,
    run,
    running_as_root,
)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
# Where our build machines and CI keep source tarballs they cannot download, beside the
# clone; a user's machine has none and downloads instead.
VENDOR_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "vendor"
KAFKA_POM = Path(__file__).resolve().parent / "kafka" / "pom.xml"

# Debian package -> a file that proves it is installed.
DEBIAN_PACKAGES = {
    "postgresql-15": PG_BIN / "postgres",
    "pgbouncer": Path("/usr/sbin/pgbouncer"),
    "redis-server": Path("/usr/bin/redis-server"),
    "haproxy": Path("/usr/sbin/haproxy"),
    "nginx": Path("/usr/sbin/nginx"),
    "prometheus": Path("/usr/bin/prometheus"),
    "prometheus-alertmanager": Path("/usr/bin/prometheus-alertmanager"),
    "prometheus-node-exporter": Path("/usr/bin/prometheus-node-exporter"),
    "prometheus-redis-exporter": Path("/usr/bin/prometheus-redis-exporter"),
    "prometheus-nginx-exporter": Path("/usr/bin/prometheus-nginx-exporter"),
    "prometheus-postgres-exporter": Path("/usr/bin/prometheus-postgres-exporter"),
    # PostgreSQL's failover (`up --postgres-ha`): Patroni and its store.
    "patroni": Path("/usr/bin/patroni"),
    "etcd-server": Path("/usr/bin/etcd"),
}
# What the tests need besides: Chromium for the ops page test (tests/integration/test_ops.py).
TEST_DEBIAN_PACKAGES = {
    "chromium": Path("/usr/bin/chromium"),
}


def missing_debian_packages(packages: dict[str, Path]) -> list[str]:
    return [pkg for pkg, probe in packages.items() if not probe.exists()]


def ensure_debian_packages(packages: dict[str, Path] = DEBIAN_PACKAGES) -> list[str]:
    """Installs the missing packages with apt-get; returns what it installed."""
    missing = missing_debian_packages(packages)
    if not missing:
        return []
    if not running_as_root() or shutil.which("apt-get") is None:
        raise StackError(
            f"missing Debian packages: {' '.join(missing)}; install them with "
            f"'sudo apt-get install {' '.join(missing)}' and run again"
        )
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(["apt-get", "install", "-y", "-q", *missing], env=env, timeout_s=900)
    except StackError:
        # A fresh machine has no package lists yet: update once, then try again.
        run(["apt-get", "update", "-q"], env=env, timeout_s=600)
        run(["apt-get", "install", "-y", "-q", *missing], env=env, timeout_s=900)
    still = missing_debian_packages(packages)
    if still:
        raise StackError(f"apt-get ran but these are still missing: {' '.join(still)}")
    return missing


def java_binary() -> str:
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "Java 17+ is required for Kafka: install it with "
            "'apt-get install openjdk-17-jre-headless'"
        )
    return java


def ensure_kafka_jars(config: StackConfig) -> bool:
    """Fetches Kafka's broker and its runtime dependencies from Maven Central into the cache,
    once. Returns True when it downloaded."""
    lib = config.kafka_lib_dir
    marker = lib / ".complete"
    if marker.exists():
        return False
    java_binary()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven is required to fetch Kafka: install it with 'apt-get install maven'"
        )
    if lib.exists():
        shutil.rmtree(lib)  # a half-finished download from an interrupted run
    lib.mkdir(parents=True)
    try:
        subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "-f",
                str(KAFKA_POM),
                f"-Dkafka.version={config.kafka_version}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={lib}",
                "-DincludeScope=runtime",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.CalledProcessError as exc:
        tail = (exc.stdout + exc.stderr).strip()[-1500:]
        raise StackError(
            "could not fetch Kafka from Maven Central (is the registry reachable? "
            f"try 'mvn -f {KAFKA_POM} dependency:resolve'):\n{tail}"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise StackError("fetching Kafka from Maven Central timed out after 15 minutes") from exc
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise StackError(f"Maven finished but no kafka_2.13 jar is in {lib}")
    marker.touch()
    return True


def ensure_users(config: StackConfig) -> list[str]:
    """When we are root: the unprivileged system user our services run as (procs.APP_USER),
    and what each component's user must reach (Debian's packages make the others: postgres,
    redis, haproxy, prometheus, www-data). Directories others may not pass through on the
    way get an ACL entry for that user alone, `--x`: it may pass through, not list them,
    and nothing is opened to anyone else. Then a probe imports every service as our user.
    Returns what was done."""
    if not running_as_root():
        return []  # every component runs as ourselves: already unprivileged
    done = []
    try:
        pwd.getpwnam(APP_USER)
    except KeyError:
        run(
            [
                "useradd", "--system", "--user-group", "--no-create-home",
                "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", APP_USER,
            ]
        )  # fmt: skip
        done.append(f"created the system user '{APP_USER}'")
    state = (config.state_dir,)
    reach = {
        # The code, the Python it runs on, Kafka's jars (the broker runs as it too).
        APP_USER: (REPO_ROOT, Path(sys.executable), Path(sys.base_prefix), config.kafka_lib_dir),
        DATABASE_USER: state,
        REDIS_USER: state,
        HAPROXY_USER: state,
        PROMETHEUS_USER: state,
        NGINX_USER: state,
    }
    for user, paths in reach.items():
        closed = sorted({d for path in (*paths, *state) for d in _closed_dirs(path, user)})
        if not closed:
            continue
        ensure_debian_packages({"acl": Path("/usr/bin/setfacl")})
        for directory in closed:
            run(["setfacl", "-m", f"u:{user}:x", str(directory)])
        done.append(f"'{user}' may pass through {' '.join(map(str, closed))}")
    imports = "import api.app, photo_worker.app, ingest.app, streams.app, notifier.app"
    try:
        run([sys.executable, "-c", f"{imports}, infra.ops_exporter"], user=APP_USER, cwd=REPO_ROOT)
    except StackError as exc:
        raise StackError(
            f"the '{APP_USER}' user cannot run the services from {REPO_ROOT}: {exc}"
        ) from exc
    return done


def _closed_dirs(path: Path, user: str) -> list[Path]:
    """The directories on the way to `path` (itself too, if one) that others may not pass
    through, and that do not let `user` through already."""
    path = path.resolve()
    chain = [*reversed(path.parents), path] if path.is_dir() else list(reversed(path.parents))
    closed = []
    for directory in chain:
        if not directory.exists() or directory.stat().st_mode & 0o001:
            continue  # made later by the stack, open to all, or open to others
        if not _acl_lets_through(directory, user):
            closed.append(directory)
    return closed


def _acl_lets_through(directory: Path, user: str) -> bool:
    if shutil.which("getfacl") is None:
        return False
    listed = run(["getfacl", "--omit-header", "--absolute-names", str(directory)])
    return any(
        line.startswith(f"user:{user}:") and line.split(":")[2][2:3] == "x"
        for line in listed.splitlines()
    )
