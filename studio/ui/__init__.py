"""The web UI at ``/ui``: static pages (HTML, ES-module JavaScript, CSS) shipped inside the package,
served by the studio's own FastAPI app — nothing to build, no CDN, no server-side session.

The pages are a client of the studio API: the browser keeps the user's studio API key in
``sessionStorage`` and sends it as ``Authorization: Bearer`` to ``/api/*`` and ``/v1/*``, so the UI
has exactly the API's auth, validation and errors (problem+json ``detail`` and ``fix`` are shown in
words). Pages: login, datasets (+ snapshot, synthetic generation), new experiment, jobs (+ job
page), batches, models, playground, evaluations, A/B experiments, usage, keys (admin); docs/ui.md.
Why not Gradio: docs/decisions.md.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from studio import __version__

STATIC = Path(__file__).with_name("static")
PREFIX = "/ui"


def index_html() -> str:
    """The one HTML page; the version in asset URLs makes browsers fetch new assets after upgrades."""
    return (STATIC / "index.html").read_text(encoding="utf-8").replace("{{version}}", __version__)


def mount_ui(app: FastAPI) -> None:
    """Serve the UI under ``/ui`` of ``app``. The page itself needs no key: it holds no data, and
    every call it makes authenticates with the key the user enters."""
    page = index_html()

    @app.get(PREFIX, include_in_schema=False)
    def ui_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)

    @app.get(f"{PREFIX}/", include_in_schema=False, response_class=HTMLResponse)
    def ui_index() -> HTMLResponse:
        # no-store: a stale page could call API shapes an upgraded studio no longer has.
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    app.mount(f"{PREFIX}/static", StaticFiles(directory=STATIC), name="ui-static")
