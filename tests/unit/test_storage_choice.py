"""Which storage a stack gets, and the checks on TimescaleDB's source tarball."""

import hashlib
from pathlib import Path

import pytest

from infra import postgres, storage, timescaledb
from infra.config import StackConfig
from infra.procs import StackError


def config_in(tmp_path: Path, **settings: object) -> StackConfig:
    # `auto` unless a test says otherwise, whatever TELEMETRY_STORAGE the shell has (CI's).
    settings = {"storage": "auto"} | settings
    return StackConfig(state_dir=tmp_path / "state", **settings)  # type: ignore[arg-type]


def make_cluster(config: StackConfig, recorded: str | None) -> None:
    data = postgres.data_dir(config, "primary")
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    if recorded is not None:
        postgres.storage_record(config).write_text(recorded + "\n")


class Ensure:
    """Stands in for building TimescaleDB: succeeds, or fails as a broken build does."""

    def __init__(self, fails: bool = False) -> None:
        self.fails = fails
        self.calls = 0

    def __call__(self, config: StackConfig, report: storage.Report) -> bool:
        self.calls += 1
        if self.fails:
            raise StackError("cmake failed: no compiler")
        return True


def test_auto_takes_timescaledb_when_it_can_be_installed(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    ensure = Ensure()
    assert storage.prepare(config, print, ensure) == "timescaledb"
    assert ensure.calls == 1
    make_cluster(config, recorded=None)  # initdb ran after the record was written
    assert storage.recorded(config) == "timescaledb"


def test_auto_falls_back_to_native_with_a_warning_saying_why(tmp_path: Path) -> None:
    said: list[str] = []
    assert storage.prepare(config_in(tmp_path), said.append, Ensure(fails=True)) == "native"
    assert any("WARNING" in line and "no compiler" in line for line in said)


def test_an_explicit_timescaledb_that_cannot_be_built_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="no compiler"):
        storage.prepare(config_in(tmp_path, storage="timescaledb"), print, Ensure(fails=True))


def test_native_never_builds(tmp_path: Path) -> None:
    ensure = Ensure()
    assert storage.prepare(config_in(tmp_path, storage="native"), print, ensure) == "native"
    assert ensure.calls == 0


def test_an_existing_cluster_keeps_its_storage(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    make_cluster(config, recorded="native")
    ensure = Ensure()
    assert storage.prepare(config, print, ensure) == "native"
    assert ensure.calls == 0
    with pytest.raises(StackError, match="created on native"):
        storage.prepare(config_in(tmp_path, storage="timescaledb"), print, ensure)


def test_a_cluster_from_before_the_record_is_native(tmp_path: Path) -> None:
    config = config_in(tmp_path)
    make_cluster(config, recorded=None)
    assert storage.recorded(config) == "native"


def test_a_timescaledb_cluster_reinstalls_the_extension_when_missing(tmp_path: Path) -> None:
    config = config_in(tmp_path, storage="timescaledb")
    make_cluster(config, recorded="timescaledb")
    ensure = Ensure()
    assert storage.prepare(config, print, ensure) == "timescaledb"
    assert ensure.calls == 1
    with pytest.raises(StackError, match="no compiler"):  # no silent switch to native
        storage.prepare(config_in(tmp_path), print, Ensure(fails=True))


def test_the_tarball_must_have_the_release_digest(tmp_path: Path) -> None:
    tarball = tmp_path / "t.tar.gz"
    tarball.write_bytes(b"not timescaledb")
    with pytest.raises(StackError, match="expected"):
        timescaledb.check_sha256(tarball, timescaledb.SOURCE_SHA256)
    timescaledb.check_sha256(tarball, hashlib.sha256(b"not timescaledb").hexdigest())


def test_the_source_is_the_vendored_copy_when_there_is_one(tmp_path: Path) -> None:
    assert timescaledb.default_source(tmp_path) == timescaledb.SOURCE_URL
    vendored = tmp_path / f"timescaledb-{timescaledb.VERSION}.tar.gz"
    vendored.write_bytes(b"")
    assert timescaledb.default_source(tmp_path) == str(vendored)
    with pytest.raises(StackError, match="does not exist"):
        timescaledb.fetch(str(tmp_path / "missing.tar.gz"), tmp_path)
