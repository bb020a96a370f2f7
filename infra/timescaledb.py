"""TimescaleDB built from source against Debian's PostgreSQL 15, once per machine.

No package registry we can reach ships TimescaleDB for PostgreSQL 15, so `telemetry install`
builds the last release that supports it (docs/architecture.md, "Storage"). The build is
staged into the cache (`make install DESTDIR=...`), keyed by TimescaleDB's and
PostgreSQL's versions, and copied into PostgreSQL's directories from there: a second
state dir, a reinstalled PostgreSQL package or a new clone costs a copy, not a build.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

from infra.config import StackConfig
from infra.install import PG_BIN, VENDOR_DIR, ensure_debian_packages
from infra.procs import StackError, run, running_as_root

VERSION = "2.28.3"
# The release tag's source tarball; a vendored copy (`timescaledb_source`) has the same bytes.
SOURCE_URL = f"https://github.com/timescale/timescaledb/archive/refs/tags/{VERSION}.tar.gz"
SOURCE_SHA256 = "ec2f7de0ba53a473c01e0a57e09053898c6b1f7487228caff0f1d31c8cb2dedb"

# Debian's layout for PostgreSQL 15 (what `pg_config --pkglibdir --sharedir` says).
PG_LIB = Path("/usr/lib/postgresql/15/lib")
PG_SHARE = Path("/usr/share/postgresql/15")

BUILD_PACKAGES = {
    "postgresql-server-dev-15": Path("/usr/include/postgresql/15/server/postgres.h"),
    "cmake": Path("/usr/bin/cmake"),
    "gcc": Path("/usr/bin/gcc"),
    "make": Path("/usr/bin/make"),
    "libssl-dev": Path("/usr/include/openssl/ssl.h"),
}

Report = Callable[[str], None]


def installed() -> bool:
    """The extension's library and install script are where PostgreSQL looks for them."""
    return (PG_LIB / f"timescaledb-{VERSION}.so").exists() and (
        PG_SHARE / "extension" / f"timescaledb--{VERSION}.sql"
    ).exists()


def postgres_version() -> str:
    """'15.20' from `postgres --version`: the build is only valid for this server."""
    out = run([str(PG_BIN / "postgres"), "--version"])
    match = re.search(r"\(PostgreSQL\) (\d+\.\d+)", out)
    if match is None:
        raise StackError(f"cannot read PostgreSQL's version from {out!r}")
    return match.group(1)


def build_dir(config: StackConfig) -> Path:
    return config.cache_dir / f"timescaledb-{VERSION}-pg{postgres_version()}"


def default_source(vendor_dir: Path = VENDOR_DIR) -> str:
    """A vendored tarball when the machine has one (no access to GitHub), else the release
    tag's tarball."""
    vendored = vendor_dir / f"timescaledb-{VERSION}.tar.gz"
    return str(vendored) if vendored.exists() else SOURCE_URL


def fetch(source: str, into: Path) -> Path:
    if re.match(r"^https?://", source):
        target = into / "source.tar.gz"
        try:
            with urllib.request.urlopen(source, timeout=60) as response, open(target, "wb") as f:
                shutil.copyfileobj(response, f)
        except OSError as exc:
            raise StackError(
                f"could not download {source}: {exc}; set TELEMETRY_TIMESCALEDB_SOURCE to a "
                "local copy of the tarball"
            ) from exc
        return target
    path = Path(source).expanduser()
    if not path.is_file():
        raise StackError(f"TimescaleDB source tarball {path} does not exist")
    return path


def check_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise StackError(
            f"{path} has sha256 {digest}, expected {expected}: not TimescaleDB {VERSION}'s "
            "source (set TELEMETRY_TIMESCALEDB_SHA256 if you build another tarball on purpose)"
        )


def _make(args: list[str], cwd: Path, report: Report) -> None:
    """make, reporting its progress every quarter (a build takes minutes)."""
    proc = subprocess.Popen(
        ["make", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    tail: deque[str] = deque(maxlen=30)  # what a failure shows
    shown = 0
    for line in proc.stdout:
        tail.append(line.rstrip())
        match = re.match(r"^\[\s*(\d+)%\]", line)
        if match and int(match.group(1)) >= shown + 25:
            shown = int(match.group(1)) // 25 * 25
            report(f"compiling TimescaleDB: {shown} %")
    if proc.wait() != 0:
        raise StackError(f"make {' '.join(args)} failed:\n" + "\n".join(tail))


def build(config: StackConfig, report: Report) -> Path:
    """Builds and stages TimescaleDB into the cache, once; returns the staged tree."""
    target = build_dir(config)
    if (target / ".complete").exists():
        return target
    installed_now = ensure_debian_packages(BUILD_PACKAGES)
    if installed_now:
        report(f"installed {' '.join(installed_now)} (to build TimescaleDB)")
    source = config.timescaledb_source or default_source()
    with tempfile.TemporaryDirectory(prefix="timescaledb-build-") as scratch:
        work = Path(scratch)
        report(f"fetching TimescaleDB {VERSION} from {source}")
        tarball = fetch(source, work)
        check_sha256(tarball, config.timescaledb_sha256 or SOURCE_SHA256)
        with tarfile.open(tarball) as archive:
            archive.extractall(work, filter="data")
        tops = [p for p in work.iterdir() if p.is_dir()]
        if len(tops) != 1:
            raise StackError(f"{source} does not hold one source directory")
        src = tops[0]
        report(
            f"building TimescaleDB {VERSION} for PostgreSQL {postgres_version()} "
            "(once per machine, about 3 minutes on 2 cores)"
        )
        run(
            [
                "./bootstrap",
                "-DREGRESS_CHECKS=OFF",
                "-DTAP_CHECKS=OFF",
                "-DWARNINGS_AS_ERRORS=OFF",
                "-DCMAKE_BUILD_TYPE=Release",
                f"-DPG_CONFIG={PG_BIN / 'pg_config'}",
            ],
            cwd=src,
            timeout_s=600,
        )
        _make([f"-j{os.cpu_count() or 2}"], src / "build", report)
        stage = work / "stage"
        _make(["install", f"DESTDIR={stage}"], src / "build", lambda _: None)
        if target.exists():
            shutil.rmtree(target)  # a half-written cache from an interrupted run
        shutil.copytree(stage, target, symlinks=True)
    (target / ".complete").touch()
    return target


def install_into_postgres(staged: Path) -> None:
    """Copies the staged files (library, control file, SQL scripts) into PostgreSQL's dirs."""
    if not running_as_root():
        raise StackError(
            f"installing TimescaleDB into {PG_LIB} and {PG_SHARE} needs root: run "
            "'sudo .venv/bin/telemetry install' once"
        )
    for path in staged.rglob("*"):
        if path.is_file():
            dest = Path("/") / path.relative_to(staged)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    if not installed():
        raise StackError(f"the staged build in {staged} did not install TimescaleDB {VERSION}")


def ensure(config: StackConfig, report: Report) -> bool:
    """Makes TimescaleDB available to PostgreSQL; returns True when it built or copied it."""
    if installed():
        return False
    try:
        install_into_postgres(build(config, report))
    except (OSError, tarfile.TarError) as exc:  # a corrupt tarball, a full disk...
        raise StackError(f"building or installing TimescaleDB failed: {exc!r}") from exc
    report(f"installed TimescaleDB {VERSION} into PostgreSQL 15")
    return True
