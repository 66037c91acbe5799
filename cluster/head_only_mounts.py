"""Keep some of a launcher config's file_mounts on the head only.

`ray up` copies every `file_mounts` entry to the head, then writes the head's autoscaler config
(~/ray_bootstrap_config.yaml, JSON) with the same mounts, and the autoscaler copies those from the
head to every worker it starts. The launcher schema has no per-node-type mounts, so the head's
setup drops the secrets file from that copy before the autoscaler reads it: the head keeps the
file, workers never receive it. Run by head_setup_commands (cluster/aws.yaml, cluster/gcp.yaml),
which also run on `ray up --no-restart`, when `ray up` has just rewritten the file.

    python cluster/head_only_mounts.py ~/ray_bootstrap_config.yaml /home/ray/studio-secrets.env
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def drop_mounts(config: dict, paths: list[str]) -> list[str]:
    """Remove ``paths`` from the config's file_mounts (also under ``~``-spelled keys); return those
    removed."""
    mounts = config.get("file_mounts") or {}
    wanted = {os.path.expanduser(p) for p in paths}
    gone = [k for k in mounts if os.path.expanduser(k) in wanted]
    for key in gone:
        del mounts[key]
    return gone


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: head_only_mounts.py BOOTSTRAP_CONFIG MOUNT_PATH...", file=sys.stderr)
        return 2
    path = Path(argv[0]).expanduser()
    config = json.loads(path.read_text())  # ray writes it with json.dumps
    gone = drop_mounts(config, argv[1:])
    # Written whole to a sibling, then renamed: the autoscaler never reads half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(config))
    os.replace(tmp, path)
    print(f"head only: {', '.join(gone) or 'nothing to drop'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
