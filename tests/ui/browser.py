"""Playwright driving Debian's Chromium (never Playwright's downloaded browsers): launch, a page
that records console errors and uncaught exceptions, and screenshots as test artifacts.

A test fails on any console error except "Failed to load resource" for HTTP statuses the current
step expects (a deliberate wrong key is a 401 the browser logs): see ``Browser.expect_status``.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from studio.settings import StudioSettings

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("STUDIO_UI_CHROMIUM", "/usr/bin/chromium")
_RESOURCE = re.compile(r"Failed to load resource: the server responded with a status of (\d+)")
# What a failed banner check prints: page loads, hash changes, clicks and every change of the banner,
# with the page's clock (ms), so a banner emptied by a re-render names what re-rendered it.
_TRACE = """(() => {
  const t = window.__trace = [], ms = () => Math.round(performance.now());
  t.push(`${ms()} load ${location.hash} (${performance.getEntriesByType('navigation')[0]?.type})`);
  addEventListener('hashchange', () => t.push(`${ms()} hashchange ${location.hash}`));
  document.addEventListener('click', (e) => t.push(`${ms()} click #${e.target.id || e.target.tagName}`), true);
  document.addEventListener('DOMContentLoaded', () => {
    const el = document.getElementById('banner');
    if (el) new MutationObserver(() => t.push(`${ms()} banner${el.hidden ? ' (hidden)' : ''} ${JSON.stringify(el.textContent.slice(0, 60))}`))
      .observe(el, { childList: true, characterData: true, subtree: true, attributes: true });
  });
})();"""


@contextmanager
def api_server(home: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """The studio API (``studio.api.app:create_app``) under uvicorn on a free port, with ``home`` as
    STUDIO_HOME (and ``env`` on top of this process's environment) and no Ray; yields its base URL
    once /healthz answers, stops it afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "studio.api.app:create_app", "--factory",
                             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                             # a job page's log stream of a never-started job would hold shutdown
                             "--timeout-graceful-shutdown", "3"],
                            env={**os.environ, **(env or {}), "STUDIO_HOME": str(home)}, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.3)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def need_chromium() -> None:
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        pytest.skip(f"Chromium is not installed at {CHROMIUM}: apt-get install -y chromium chromium-driver "
                    "(scripts/setup.sh does it when run as root), or set STUDIO_UI_CHROMIUM")


TEAM = (("admin-1", "admin"), ("user-1", "user"), ("user-2", "user"))


@dataclass(frozen=True)
class UiHome:
    home: Path
    settings: StudioSettings
    keys: dict[str, str]  # key name → secret (what a test logs in with)
    key_ids: dict[str, int]  # key name → its row id (what ownership columns hold)


def ui_home(tmp_path_factory: pytest.TempPathFactory, name: str, team=TEAM) -> UiHome:
    """A UI module's studio home: Chromium checked first (a skip before anything costly), a
    migrated SQLite database, and a key for each ``(name, role)`` of ``team``."""
    from studio.keys import create_key
    from studio.store.db import init_db, session_scope

    need_chromium()
    home = tmp_path_factory.mktemp(name)
    settings = StudioSettings(home=home)
    init_db(settings.db_url)
    with session_scope(settings.db_url) as s:
        made = {key_name: create_key(s, key_name, role) for key_name, role in team}
        ids = {key_name: row.id for key_name, (_, row) in made.items()}
    return UiHome(home, settings, {key_name: secret for key_name, (secret, _) in made.items()}, ids)


def screenshot_dir() -> Path:
    """``$STUDIO_UI_SCREENSHOTS``, else ``ui-screenshots/`` at the repository root (gitignored; CI
    collects it). The first call of a run empties it of older screenshots."""
    out = Path(os.environ.get("STUDIO_UI_SCREENSHOTS") or REPO / "ui-screenshots").resolve()
    if out not in SCREENSHOT_DIRS:
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.png"):
            old.unlink()
        SCREENSHOT_DIRS.add(out)
    return out


SCREENSHOT_DIRS: set[Path] = set()  # printed at the end of the run (tests/ui/conftest.py)


class Browser:
    def __init__(self, page, shots: Path, base: str):
        self.page, self.shots, self.base = page, shots, base
        self.errors: list[str] = []
        self.responses: list[str] = []  # "METHOD path status" in order, for failure messages
        self._allowed: set[int] = set()
        page.on("console", self._console)
        page.on("response", lambda r: self.responses.append(f"{r.request.method} {r.url.removeprefix(base)} {r.status}"))
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))

    def _console(self, msg) -> None:
        if msg.type != "error":
            return
        m = _RESOURCE.search(msg.text)
        if m and int(m.group(1)) in self._allowed:
            return
        self.errors.append(f"console: {msg.text} ({msg.location.get('url', '')})")

    @contextmanager
    def expect_status(self, *statuses: int):
        """HTTP errors this step provokes on purpose (and shows in words)."""
        self._allowed = set(statuses)
        try:
            yield
        finally:
            self._allowed = set()

    def goto(self, hash_: str) -> None:
        self.page.goto(f"{self.base}/ui/{hash_}")

    def shot(self, name: str) -> Path:
        """Screenshot the page, after checking it shows no unfilled values."""
        text = self.page.inner_text("body")
        for junk in ("undefined", "[object Object]", "NaN", "nullnull"):
            assert junk not in text, f"page {name} shows {junk!r}:\n{text}"
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def banner(self) -> str:
        el = self.page.locator("#banner")
        return el.inner_text() if el.is_visible() else ""

    def trace(self) -> str:
        """What the page did (see ``_TRACE``) and the last responses it had: for failure messages."""
        events = self.page.evaluate("window.__trace || []")
        return "page: " + " | ".join(events[-40:]) + "\nresponses: " + " | ".join(self.responses[-30:])

    def banner_says(self, text: str) -> None:
        """The banner shows ``text`` now; if not, fail with what the page did before."""
        shown = self.banner()
        assert text in shown, f"banner {shown!r} does not say {text!r}\n{self.trace()}"

    def wait(self, selector: str, timeout_s: float = 30) -> None:
        """Wait for ``selector``; on a timeout, fail with what the page said (banner, errors)."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_selector(selector, timeout=timeout_s * 1000)
        except PlaywrightTimeout:
            pytest.fail(f"{selector!r} did not appear in {timeout_s:.0f} s; banner: {self.banner()!r}; "
                        f"browser errors: {self.errors}; page:\n{self.page.inner_text('main')[:2000]}")

    def login(self, key: str) -> None:
        self.goto("#/login")
        self.page.fill("#key", key)
        self.page.click("#login")
        self.page.wait_for_selector("#logout")

    def assert_clean(self) -> None:
        assert not self.errors, "browser errors:\n" + "\n".join(self.errors)


@contextmanager
def chromium_page(base: str, shots: Path):
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            context.set_default_timeout(30_000)
            context.add_init_script(_TRACE)
            yield Browser(context.new_page(), shots, base)
        finally:
            browser.close()
