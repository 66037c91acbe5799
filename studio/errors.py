"""One error type for everything a user can get wrong: it names the problem and the fix."""

from __future__ import annotations


class StudioError(Exception):
    """A failure the user can act on. ``str()`` is the problem followed by the fix."""

    #: HTTP status the API answers with when this error reaches a route.
    status_code: int = 400

    def __init__(self, problem: str, fix: str | None = None, *, status_code: int | None = None):
        self.problem = problem
        self.fix = fix
        if status_code is not None:
            self.status_code = status_code
        super().__init__(problem if not fix else f"{problem}. Fix: {fix}")


class NotFound(StudioError):
    status_code = 404


class Conflict(StudioError):
    status_code = 409


class Unavailable(StudioError):
    status_code = 503
