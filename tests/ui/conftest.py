"""Fixtures of the UI tests: the API's TestClient and keys (tests/api/conftest.py) reused here;
the run ends by saying where the browser tests saved their screenshots."""

from tests.api.conftest import admin_key, client, user_key  # noqa: F401
from tests.ui.browser import SCREENSHOT_DIRS


def pytest_terminal_summary(terminalreporter):
    for path in sorted(SCREENSHOT_DIRS):
        shots = sorted(p.name for p in path.glob("*.png"))
        if shots:
            terminalreporter.write_line(f"UI screenshots ({len(shots)}): {path}")
