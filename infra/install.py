"""Installs what the stack needs and is missing: Debian packages and Kafka's jars."""

import shutil
import subprocess
from pathlib import Path

from infra.config import StackConfig
from infra.procs import StackError, run, running_as_root

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
