"""The command line every job entrypoint shares: ``python -m <entrypoint> --job-id N`` (what the
scheduler submits as a Ray Job) or, where the kind has one, ``--recipe FILE [key=value …]`` (what
``ray job submit`` users run: the job row is created here first). A refusal before the run (a
missing row, a bad recipe) is printed as ``error: …`` with its fix and exits ``EXIT_REFUSED``; the
run's own exit code is the entrypoint's."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from studio.errors import StudioError
from studio.jobs.driver import EXIT_REFUSED
from studio.settings import StudioSettings
from studio.store.db import init_db


@dataclass(frozen=True)
class FromFile:
    """How a kind creates its job row from a file: the flag, its help, and ``create(settings, path,
    overrides) -> job id`` (it says what it created)."""

    flag: str
    help: str
    create: Callable[[StudioSettings, str, list[str]], int]


def job_main(argv: list[str] | None, prog: str, description: str, job_help: str, run: Callable[..., int],
             from_file: FromFile | None = None,
             load: Callable[[StudioSettings, int], Any] | None = None) -> int:
    """Parse, create the row from a file if asked, ``load(settings, job_id)`` the job's spec where
    given (a refusal too), then ``run(settings, job_id[, spec])``: its exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--job-id", type=int, help=job_help)
    if from_file is not None:
        which.add_argument(from_file.flag, dest="file", metavar=from_file.flag.lstrip("-").upper(), help=from_file.help)
        parser.add_argument("overrides", nargs="*", help="key.sub=value overrides of the file's fields")
    args = parser.parse_args(argv)
    overrides = getattr(args, "overrides", [])
    if args.job_id is not None and overrides:
        parser.error(f"overrides apply to {from_file.flag} only; a job's spec is fixed when it is submitted")
    settings = StudioSettings()
    try:
        init_db(settings.db_url)
        job_id = args.job_id if args.job_id is not None else from_file.create(settings, args.file, overrides)
        spec = load(settings, job_id) if load is not None else None
    except StudioError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    return run(settings, job_id) if load is None else run(settings, job_id, spec)
