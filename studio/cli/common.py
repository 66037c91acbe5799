"""What every CLI command shares: the console, settings, and turning StudioError into a message."""

from __future__ import annotations

from rich.console import Console

from studio.settings import StudioSettings, get_settings
from studio.store.db import init_db

console = Console()
err_console = Console(stderr=True)


def settings_with_db() -> StudioSettings:
    """Settings, with the database migrated to the newest schema (cheap when it already is)."""
    settings = get_settings()
    init_db(settings.db_url)
    return settings
