"""Which base models have no replica that can answer because their engines died, from the
replicas' own reports (``ModelDeployment`` sends ``engine_dead`` in its stats every
``STATS_EVERY_S``, and at once when its engine dies).

A replica whose engine died answers 503 itself and fails its health checks; Serve replaces it
after three in a row. Between Serve stopping it and the new replica being ready there is no
replica at all, and a request sent to the deployment's handle would wait in Serve's queue for the
new one (a minute or more on a small machine): the Router answers 503 + ``Retry-After`` for the
model instead (``EngineLiveness.down``), until a replica with a live engine reports.
"""

from __future__ import annotations

import time

# A replica with a live engine reports every 2 s; one silent for longer may be loaded, or gone.
ALIVE_S = 10.0
# Silent this long, a replica is forgotten (Serve stopped it, or the model was evicted).
FORGET_S = 60.0


class EngineLiveness:
    def __init__(self) -> None:
        # base → replica → (when it last reported, why its engine died or None)
        self._seen: dict[str, dict[str, tuple[float, str | None]]] = {}

    def report(self, base: str, replica: str, dead: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        seen = self._seen.setdefault(base, {})
        seen[replica] = (now, dead)
        alive = any(why is None and now - at <= ALIVE_S for at, why in seen.values())
        for r, (at, why) in list(seen.items()):
            # A dead replica that went silent is kept until a live one reports: until then it
            # is the reason the model cannot answer.
            if now - at > FORGET_S and (why is None or alive) or (
                    why is not None and alive and now - at > ALIVE_S):
                del seen[r]

    def down(self, base: str, now: float | None = None) -> str | None:
        """Why ``base`` cannot answer now (the engine of every replica heard from died, and no
        replica with a live engine reported since), else None."""
        seen = self._seen.get(base)
        if not seen:
            return None
        now = time.monotonic() if now is None else now
        if any(why is None and now - at <= ALIVE_S for at, why in seen.values()):
            return None
        deaths = sorted((at, why) for at, why in seen.values() if why is not None)
        return deaths[-1][1] if deaths else None

    def dead_replicas(self, base: str, now: float | None = None) -> dict[str, str]:
        """The replicas of ``base`` still running (reported within ``ALIVE_S``) with a dead
        engine: Serve may count them healthy until their health checks fail."""
        now = time.monotonic() if now is None else now
        return {r: why for r, (at, why) in self._seen.get(base, {}).items()
                if why is not None and now - at <= ALIVE_S}

    def forget(self, base: str) -> None:
        self._seen.pop(base, None)
