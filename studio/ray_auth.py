"""Where Ray's auth token is. The local head runs with token auth (docs/decisions.md,
2026-11-22); whoever holds the token controls the cluster (jobs, Serve, the dashboard), so
`studio status` says where it is and never prints it."""

from __future__ import annotations

import os
from pathlib import Path


def ray_auth_token() -> str | None:
    """Ray's token, looked up the way Ray does: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    try:
        return ray_auth_token_path().read_text().strip() or None
    except OSError:
        return None


def ray_auth_token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")


def ray_auth_token_source() -> str:
    """Where Ray's token comes from, for `studio status` (never the token itself)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "the RAY_AUTH_TOKEN environment variable"
    path = ray_auth_token_path()
    if not path.is_file():
        return f"{path} (none yet)"
    mode = path.stat().st_mode & 0o777
    return f"{path} (mode {mode:o}" + (": other users can read it; chmod 600 it)" if mode & 0o077 else ")")


def restrict_token_file() -> None:
    """Make the token file readable by its owner only (Ray creates it 644). Left alone when it
    belongs to another user."""
    path = ray_auth_token_path()
    try:
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    except OSError:
        pass
