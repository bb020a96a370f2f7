"""`telemetry device add|list|remove` and `telemetry keys`: the commands reach the
registry and the key ring, and say what went wrong (cli/main.py)."""

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cli import main as cli
from infra import devices, keys
from infra.config import StackConfig
from infra.procs import StackError
from schemas.devices import DeviceRecord


def test_device_commands_reach_the_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    registry: dict[str, DeviceRecord] = {}

    def add(_: StackConfig, device_id: str, driver_id: str) -> DeviceRecord:
        registry[device_id] = DeviceRecord(driver_id=driver_id, added_at=datetime.now(UTC))
        return registry[device_id]

    monkeypatch.setattr(devices, "add", add)
    monkeypatch.setattr(devices, "listing", lambda _: dict(registry))
    monkeypatch.setattr(devices, "remove", lambda _, d: registry.pop(d, None) is not None)
    assert cli.main(["device", "add", "8675309", "--driver", "drv-1"]) == 0
    assert cli.main(["device", "list"]) == 0
    assert "8675309" in capsys.readouterr().err
    assert cli.main(["device", "remove", "8675309"]) == 0
    assert cli.main(["device", "remove", "8675309"]) == 1
    assert "no device" in capsys.readouterr().err


def test_a_bad_device_id_is_refused_before_anything_is_sent() -> None:
    with pytest.raises(StackError, match="device id"):
        devices.add(StackConfig(), "has space", "drv-1")
    with pytest.raises(StackError, match="driver id"):
        devices.add(StackConfig(), "dev-1", "")


def test_keys_commands_rotate_and_refuse_an_early_retire(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEMETRY_STATE_DIR", str(tmp_path / "state"))
    assert cli.main(["keys", "list"]) == 1  # no stack yet: it says to run up
    keys.ensure(StackConfig())
    first = keys.listing(StackConfig())[0]["kid"]
    assert cli.main(["keys", "rotate"]) == 0
    # "--": a thumbprint may begin with "-", which argparse would take for an option.
    assert cli.main(["keys", "retire", "--", str(first)]) == 1  # its tokens may be valid
    assert "may be valid until" in capsys.readouterr().err.replace("\n", " ")
    assert cli.main(["keys", "list"]) == 0
