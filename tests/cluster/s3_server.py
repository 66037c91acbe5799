"""A real S3-compatible server on loopback for tests: moto's server mode (HTTP on a free port), and
the standard AWS environment pointing at it — the same variables a cluster node would carry, so
s3fs (the artifact store), pyarrow (Ray Train checkpoints) and boto3 (MLflow) all find it unchanged.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
       "AWS_SESSION_TOKEN", "AWS_PROFILE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _forget_cached_filesystems() -> None:
    # fsspec caches one S3FileSystem per set of arguments; one made for another endpoint (or
    # before the variables were set) would be reused otherwise.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def local_s3() -> Iterator[str]:
    """Start the server, export the AWS variables for it (restored after), yield its endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    saved = {k: os.environ.get(k) for k in ENV}
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="studio-test",
                      AWS_SECRET_ACCESS_KEY="studio-test-secret", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_SESSION_TOKEN", None)
    os.environ.pop("AWS_PROFILE", None)
    _forget_cached_filesystems()
    try:
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _forget_cached_filesystems()


def new_bucket(prefix: str = "studio") -> str:
    """Create a bucket with a unique name on the server the environment points at."""
    import boto3

    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name
