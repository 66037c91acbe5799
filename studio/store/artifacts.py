"""The artifact store: bytes (dataset Parquet, adapters, checkpoints) behind one fsspec URI.

A local directory by default; ``s3://`` (s3fs), ``gs://`` (gcsfs) and any other fsspec protocol by
URL (``STUDIO_ARTIFACTS_URI``). Keys are relative, '/'-separated paths; ``uri(key)`` gives the full
URI that other parts store and pass on (snapshot rows, registry versions, job checkpoints).

Credentials are never part of a URI or of the studio's settings: each filesystem finds its own in
the environment — for S3 boto's chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``,
an instance profile or IRSA role; ``AWS_ENDPOINT_URL`` for an S3-compatible server such as MinIO),
for GCS Google's application default credentials (``GOOGLE_APPLICATION_CREDENTIALS``, a node's
service account). Ray Train's checkpoint storage (pyarrow) reads the same variables.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from studio.errors import NotFound, StudioError, Unavailable

CREDENTIALS_FIX = ("check the credentials in the environment (AWS_* / AWS_PROFILE / the instance "
                   "role for s3://, GOOGLE_APPLICATION_CREDENTIALS / the service account for gs://)")


def filesystem(uri: str):
    """``(fs, path)`` for a URI, or a StudioError naming the package a protocol needs."""
    try:
        return url_to_fs(uri)
    except (ImportError, ValueError) as e:
        protocol = uri.split("://", 1)[0] if "://" in uri else "file"
        package = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}.get(protocol)
        fix = f"install {package} (a dependency of llm-studio: reinstall the project)" if package \
            else "use a local path, s3://bucket/prefix or gs://bucket/prefix"
        raise StudioError(f"artifact store {uri}: cannot open protocol {protocol!r} ({e})", fix) from e


@contextmanager
def storage_errors(uri: str, action: str) -> Iterator[None]:
    """Turn a filesystem's OSError into one line that names the URI and what to do about it."""
    try:
        yield
    except PermissionError as e:
        raise StudioError(f"access denied when {action} {uri} ({e})", CREDENTIALS_FIX) from e
    except FileNotFoundError:
        raise
    except OSError as e:
        raise Unavailable(f"the artifact store failed when {action} {uri} ({e})",
                          "check that the bucket exists and the store is reachable; " + CREDENTIALS_FIX) from e


class ArtifactStore:
    def __init__(self, root_uri: str):
        self.fs, root = filesystem(root_uri)
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
        with storage_errors(self.uri(key), "checking"):
            self.fs.invalidate_cache(self.path(key))  # listings cached before another writer wrote it
            return self.fs.exists(self.path(key))

    def put_bytes(self, key: str, data: bytes) -> str:
        """Write atomically where the filesystem allows it (local: temp file + rename; object
        stores: a PUT is atomic)."""
        dest = self.path(key)
        if self.protocol == "file":
            self.fs.makedirs(os.path.dirname(dest), exist_ok=True)
            tmp = f"{dest}.tmp-{uuid.uuid4().hex}"  # unique per writer: threads share a pid
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, dest)
            return self.uri(key)
        with self._writing(key):
            with self.fs.open(dest, "wb") as f:
                f.write(data)
        return self.uri(key)

    def get_bytes(self, key: str) -> bytes:
        try:
            self.fs.invalidate_cache(self.path(key))
            with storage_errors(self.uri(key), "reading"), self.fs.open(self.path(key), "rb") as f:
                return f.read()
        except FileNotFoundError as e:
            raise NotFound(f"artifact {self.uri(key)} is missing", "re-create it") from e

    def put_dir(self, local_dir: str | Path, key: str) -> str:
        """Copy a local directory tree to ``key`` (e.g. an adapter to ``models/<name>/<job>``)."""
        with self._writing(key):
            self.fs.put(str(local_dir).rstrip("/") + "/", self.path(key), recursive=True)
        return self.uri(key)

    @contextmanager
    def _writing(self, key: str) -> Iterator[None]:
        try:
            with storage_errors(self.uri(key), "writing"):
                yield
        except FileNotFoundError as e:  # an object store's "no such bucket"
            raise StudioError(f"cannot write {self.uri(key)}: the bucket does not exist ({e})",
                              "create the bucket, or point STUDIO_ARTIFACTS_URI at an existing one") from e


def open_uri(uri: str, mode: str = "rb"):
    """Open any artifact URI the store handed out (local path or fsspec URL)."""
    fs, path = filesystem(uri)  # a clear error for a protocol whose package is missing
    # s3fs/gcsfs cache directory listings for the life of the process; an artifact written since
    # by another process (an ingest on another replica, a job on another node) must still be found.
    fs.invalidate_cache(path)
    return fsspec.open(uri, mode)
