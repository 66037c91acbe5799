"""The model page's Download and Merge in a real browser, against the studio API under uvicorn (no
Ray) with the tiny model and a LoRA adapter registered as ``rev@1`` (the name user-1's) and a
version whose files are gone (``rev@2``): every team key downloads; the owner and admins merge."""

from __future__ import annotations

import tarfile

import pytest

from studio.models.tiny import make_tiny
from studio.registry.versions import register_version
from studio.store.artifacts import ArtifactStore
from studio.store.db import session_scope
from tests.deployments.conftest import make_adapter
from tests.ui.browser import api_server, chromium_page, screenshot_dir, ui_home

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]  # no Ray: a uvicorn and a browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ui = ui_home(tmp_path_factory, "ui-export-home")
    home, settings = ui.home, ui.settings
    tiny = make_tiny(home / "models" / "tiny")
    uri = ArtifactStore(settings.artifacts).put_dir(make_adapter(tiny, home / "adapter", seed=1), "models/rev/1-1")
    with session_scope(settings.db_url) as s:
        common = {"name": "rev", "base_model": str(tiny), "method": "sft", "adapter_type": "lora",
                  "owner_key_id": ui.key_ids["user-1"]}
        register_version(s, uri=uri, **common)
        register_version(s, uri=str(home / "deleted"), **common)
    with api_server(home) as base:
        yield {"base": base, "keys": ui.keys, "settings": settings}


def test_every_key_downloads_and_the_owner_merges(server, tmp_path):
    with chromium_page(server["base"], screenshot_dir()) as b:
        b.login(server["keys"]["user-2"])  # not the name's owner: download, no merge
        b.goto("#/models/rev")
        b.wait("button.download[data-ref='rev@1']")
        assert b.page.locator("button.merge, #merge-box").count() == 0
        with b.page.expect_download() as download:  # fetched with the key, saved by the browser
            b.page.click("button.download[data-ref='rev@1']")
        assert download.value.suggested_filename == "rev-v1.tar.gz"
        with tarfile.open(download.value.path(), "r:gz") as tar:
            assert {"rev-v1/adapter_config.json", "rev-v1/README.md"} <= set(tar.getnames())
        with b.expect_status(404):
            b.page.click("button.download[data-ref='rev@2']")
            b.wait("#banner:has-text('the files of rev@2 are gone')")
        b.page.click("#logout")

        b.login(server["keys"]["user-1"])  # the owner merges, and names a new base model
        b.goto("#/models/rev")
        b.wait("button.merge[data-ref='rev@1']")
        b.page.fill("#merge-base-name", "rev-base")
        b.page.click("button.merge[data-ref='rev@1']")
        b.wait("#banner:has-text('rev@1 merged')", timeout_s=120)
        assert "base model rev-base" in b.banner()
        assert (server["settings"].models_dir / "rev-base" / "model.safetensors").is_file()
        b.shot("models-export")
        b.assert_clean()
