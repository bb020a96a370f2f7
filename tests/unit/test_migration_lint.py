"""squawk over the migrations (`make lint`): every migration passes as the runner applies
it, and a plain index build on a table under writes fails unless the migration says why."""

import shutil
import subprocess
import sys
from pathlib import Path

from infra import migrate

SQUAWK = shutil.which("squawk", path=str(Path(sys.executable).parent))


def lint(directory: Path) -> subprocess.CompletedProcess[str]:
    assert SQUAWK is not None, "squawk is a dev dependency: pip install -e '.[dev]'"
    results = [
        subprocess.run(command, capture_output=True, text=True, check=False)
        for command in migrate.squawk_commands(SQUAWK, directory)
    ]
    return next((r for r in results if r.returncode != 0), results[0])


def test_every_migration_passes() -> None:
    result = lint(migrate.MIGRATIONS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_blocking_index_build_fails_unless_the_migration_says_why(tmp_path: Path) -> None:
    (tmp_path / "0001_index.sql").write_text("CREATE INDEX pings_driver ON pings (driver_id);\n")
    failed = lint(tmp_path)
    assert failed.returncode != 0 and "require-concurrent-index-creation" in failed.stdout
    (tmp_path / "0001_index.sql").write_text(
        "-- Exception (squawk): a test's.\n"
        "-- squawk-ignore require-concurrent-index-creation\n"
        "CREATE INDEX pings_driver ON pings (driver_id);\n"
    )
    assert lint(tmp_path).returncode == 0
    # Outside a transaction, CONCURRENTLY, after dropping a half-built one: clean.
    (tmp_path / "0001_index.sql").write_text(
        f"{migrate.NO_TRANSACTION}\nDROP INDEX CONCURRENTLY IF EXISTS pings_driver;\n"
        f"{migrate.STEP}\nCREATE INDEX CONCURRENTLY IF NOT EXISTS pings_driver "
        "ON pings (driver_id);\n"
    )
    assert lint(tmp_path).returncode == 0
