"""Where uploads live: a small interface, and a directory under the state dir behind it
(a bucket would be another implementation)."""

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class BlobStore(Protocol):
    """Where uploads live (a directory here; a bucket would be another implementation). Writes are
    durable when they return; keys derive from the content. Blocking: call it from a thread. Safe
    for concurrent use."""

    def put(self, data: bytes) -> str:
        """Stores `data` durably; returns its key (the same bytes, the same key)."""
        ...

    def get(self, key: str) -> bytes: ...

    def put_as(self, key: str, data: bytes) -> None:
        """Stores `data` under a key the caller chose (derived files, such as thumbnails)."""
        ...

    def stored_before(self, when: float, limit: int) -> list[str]:
        """Up to `limit` keys last stored before `when` (a Unix time): what a sweep looks at."""
        ...

    def delete(self, key: str) -> None:
        """Removes the blob; a missing one is no error."""
        ...


class DirectoryBlobStore:
    """Content-addressed files: a retried upload lands on the same file."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        try:
            # Stored again now: the sweep, which goes by age, must not take it from the
            # request that is about to refer to it.
            os.utime(path)
        except FileNotFoundError:
            self.put_as(key, data)
        return key

    def put_as(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside, flushed to disk, then renamed: a crash leaves the old file or none.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def stored_before(self, when: float, limit: int) -> list[str]:
        keys: list[str] = []
        for path in self.root.glob("*/*"):
            if len(keys) >= limit:
                break
            try:
                if path.stat().st_mtime >= when:
                    continue
            except FileNotFoundError:
                continue  # deleted meanwhile
            if path.name.startswith(".tmp-"):
                path.unlink(missing_ok=True)  # a write a crash interrupted
                continue
            keys.append(path.name)
        return keys

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
