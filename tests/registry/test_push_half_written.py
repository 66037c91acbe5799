"""`studio models push` failing half-way leaves nothing at the URI and no temporary copy: a local
folder whose second file cannot be written (a full disk), and an object store whose server-side
copy fails after the first object. The failure is injected at the storage edge (fsspec), the
studio's own push runs unchanged; tests/api/test_model_export.py covers the pushes that succeed and
the destinations refused before any byte is written."""

from __future__ import annotations

import errno
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from fsspec.implementations.memory import MemoryFileSystem

from studio.errors import StudioError
from studio.registry.export import push_version
from studio.registry.versions import register_version
from studio.store.db import session_scope

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the database is not what is tested


@pytest.fixture
def version(settings, tmp_path: Path) -> str:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 4}')
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    with session_scope(settings.db_url) as s:
        register_version(s, name="rev", base_model="tiny", method="sft", adapter_type="lora", uri=str(folder))
    return "rev@1"


def test_a_local_push_that_fails_on_its_second_file_leaves_nothing(settings, version, tmp_path, monkeypatch):
    real_open, written = LocalFileSystem.open, []

    def disk_full_on_second_file(self, path, mode="rb", *args, **kwargs):
        if "w" in mode:
            written.append(path)
            if len(written) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", path)
        return real_open(self, path, mode, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "open", disk_full_on_second_file)
    out = tmp_path / "pushed"
    out.mkdir()
    with session_scope(settings.db_url) as s, pytest.raises(StudioError) as e:
        push_version(s, version, str(out / "rev-1"))
    assert f"cannot write {out / 'rev-1'}" in str(e.value) and "No space left" in str(e.value)
    assert len(written) == 2 and ".tmp-" in written[0]  # the first file was written, under the temporary name
    assert list(out.iterdir()) == []  # neither rev-1 nor rev-1.tmp-*


def test_an_object_store_push_whose_copy_fails_half_way_leaves_nothing(settings, version, monkeypatch):
    fs = fsspec.filesystem("memory")
    real_copy, copied = MemoryFileSystem.copy, []

    def fail_after_first_object(self, path1, path2, *args, **kwargs):
        copied.append(path2)
        if len(copied) == 2:
            raise OSError(errno.EIO, "the store went away", path2)
        return real_copy(self, path1, path2, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "copy", fail_after_first_object)
    try:
        with session_scope(settings.db_url) as s, pytest.raises(StudioError) as e:
            push_version(s, version, "memory://bucket/adapters/rev-1")
        assert "cannot write memory://bucket/adapters/rev-1" in str(e.value)
        assert len(copied) == 2  # one object had reached the destination before the failure
        assert fs.find("/bucket") == []  # removed again, and the temporary objects too
    finally:
        fs.rm("/bucket", recursive=True) if fs.exists("/bucket") else None
