"""Log rotation for the stack's processes. Each writes its stdout to `logs/<name>.log`,
opened for appending by the stack; a file past `max_bytes` is copied to `<name>.log.1`
(older copies shifted up to `keep`) and truncated in place. The writer keeps its file
descriptor, and with O_APPEND its next line lands at the new end: no process restarts,
no signal to send (logrotate's copytruncate). A line written between the copy and the
truncation is lost; the window is a few milliseconds every `max_bytes`."""

import shutil
from pathlib import Path


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """Rotates `path` when it is larger than `max_bytes`; True when it did."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for n in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{n + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with open(path, "r+b") as file:
        file.truncate(0)
    return True


def rotate_all(directory: Path, max_bytes: int, keep: int) -> list[str]:
    """Rotates every `*.log` in `directory` that needs it; returns their names."""
    return [path.name for path in sorted(directory.glob("*.log")) if rotate(path, max_bytes, keep)]
