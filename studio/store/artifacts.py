"""The artifact store: bytes (dataset Parquet, adapters, checkpoints) behind one fsspec URI.

A local directory by default; ``s3://``, ``gs://`` and any other fsspec protocol by URL. Keys are
relative, '/'-separated paths; ``uri(key)`` gives the full URI that other parts store and pass on.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from studio.errors import NotFound


class ArtifactStore:
    def __init__(self, root_uri: str):
        self.fs, root = url_to_fs(root_uri)
        self.root = root.rstrip("/")
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        if self.protocol == "file":
            Path(self.root).mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> str:
        return f"{self.root}/{key.lstrip('/')}"

    def uri(self, key: str) -> str:
        p = self.path(key)
        return p if self.protocol == "file" else f"{self.protocol}://{p}"

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write atomically where the filesystem allows it (local: temp file + rename)."""
        dest = self.path(key)
        self.fs.makedirs(os.path.dirname(dest), exist_ok=True)
        if self.protocol == "file":
            tmp = f"{dest}.tmp-{uuid.uuid4().hex}"  # unique per writer: threads share a pid
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
        else:
            with self.fs.open(dest, "wb") as f:
                f.write(data)
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            with self.fs.open(self.path(key), "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise NotFound(f"artifact {self.uri(key)} is missing", "re-create it") from e

    def put_dir(self, local_dir: str | Path, key: str) -> str:
        self.fs.put(str(local_dir).rstrip("/") + "/", self.path(key), recursive=True)
        return self.uri(key)


def open_uri(uri: str, mode: str = "rb"):
    """Open any artifact URI the store handed out (local path or fsspec URL)."""
    return fsspec.open(uri, mode)
