"""Where uploads live: a small interface, and a directory under the state dir behind it
(a bucket would be another implementation)."""

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Stores `data` durably; returns its key (the same bytes, the same key)."""
        ...

    def get(self, key: str) -> bytes: ...

    def put_as(self, key: str, data: bytes) -> None:
        """Stores `data` under a key the caller chose (derived files, such as thumbnails)."""
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
        if not self._path(key).exists():
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
