"""The studio's model registry mirrored in MLflow's, so a user's ``MlflowClient`` sees what the
studio sees: each registry name is a registered model, each version a model version (same number,
``source`` = the adapter's URI (see ``_create_version`` for a tracking server that refuses a local
path), ``run_id`` = its training run when it had one, tags
``studio.base_model``, ``studio.snapshot_id``, ``studio.job_id``, ``studio.method``,
``studio.adapter_type``, ``studio.version``), and the aliases follow the stages:

- ``@champion`` → the name's champion (what the bare name serves);
- ``@challenger`` → the newest candidate registered after the champion (the one a promotion would
  weigh against it next); with no champion, the newest candidate.

No ``mlflow.pyfunc`` model: only the registry entries. The studio's database is the truth and the
mirror only ever catches up with it (``sync``): a version missing in MLflow is created, in version
order; an alias is set, moved or removed. Versions MLflow already has (found by their
``studio.version`` tag) are left as they are, so ``sync`` can run any number of times.

MLflow down never fails a registration or a promotion: ``mirror_best_effort`` logs what is pending,
and whoever comes next catches up — the scheduler's ``MirrorPass`` (every
``STUDIO_MLFLOW_SYNC_INTERVAL_S``, when the registry changed or the last sync failed), the next
registration of that name, or ``studio models mlflow-sync``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.errors import Unavailable
from studio.mlflow_links import mlflow_client
from studio.settings import StudioSettings
from studio.store.db import redacted_url, session_scope
from studio.store.models import ModelVersion, PromotionEvent

logger = logging.getLogger(__name__)
ALIASES = ("champion", "challenger")
VERSION_TAG = "studio.version"


@dataclass
class SyncReport:
    """What one ``sync`` changed in MLflow: versions created (``name@N``), aliases set or removed
    (``name@alias → N`` / ``name@alias removed``), names already in step, and names whose MLflow
    versions are numbered apart from the studio's (someone registered versions there by hand)."""

    created: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    in_step: list[str] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)

    def changed(self) -> bool:
        return bool(self.created or self.aliases)

    def summary(self) -> str:
        parts = [f"created {', '.join(self.created)}" if self.created else "",
                 f"aliases {', '.join(self.aliases)}" if self.aliases else "",
                 f"{len(self.in_step)} name(s) already in step" if self.in_step else "",
                 f"numbered apart in MLflow: {', '.join(self.drifted)}" if self.drifted else ""]
        return "; ".join(p for p in parts if p) or "nothing to mirror"


@dataclass(frozen=True)
class VersionRow:
    """A registry version as the mirror needs it, read before MLflow is called (no database
    transaction is held open across MLflow's network calls)."""

    name: str
    version: int
    stage: str
    base_model: str
    method: str
    adapter_type: str
    uri: str
    dataset_snapshot_id: str | None
    job_id: int | None
    mlflow_run_id: str | None

    @classmethod
    def of(cls, mv: ModelVersion) -> VersionRow:
        return cls(mv.name, mv.version, mv.stage, mv.base_model, mv.method, mv.adapter_type, mv.uri,
                   mv.dataset_snapshot_id, mv.job_id, mv.mlflow_run_id)


class MirrorUnavailable(Unavailable):
    """MLflow could not be reached or refused a write; nothing the studio holds is lost."""


def wanted_aliases(versions: list[VersionRow]) -> dict[str, int | None]:
    """``{"champion": N | None, "challenger": N | None}`` for one name's versions."""
    champion = next((v.version for v in versions if v.stage == "champion"), None)
    newer = [v.version for v in versions if v.stage == "candidate" and (champion is None or v.version > champion)]
    return {"champion": champion, "challenger": max(newer) if newer else None}


def version_tags(mv: VersionRow) -> dict[str, str]:
    tags = {VERSION_TAG: str(mv.version), "studio.base_model": mv.base_model, "studio.method": mv.method,
            "studio.adapter_type": mv.adapter_type, "studio.uri": mv.uri}
    if mv.dataset_snapshot_id:
        tags["studio.snapshot_id"] = mv.dataset_snapshot_id
    if mv.job_id is not None:
        tags["studio.job_id"] = str(mv.job_id)
    return {k: v[:5000] for k, v in tags.items()}  # MLflow's limit on a tag value


def load(session: Session, names: list[str] | None = None) -> dict[str, list[VersionRow]]:
    """The studio's versions of ``names`` (default: every name), by name, oldest first."""
    stmt = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
    if names is not None:
        stmt = stmt.where(ModelVersion.name.in_(names))
    by_name: dict[str, list[VersionRow]] = {}
    for mv in session.scalars(stmt):
        by_name.setdefault(mv.name, []).append(VersionRow.of(mv))
    return by_name


def sync(session: Session, tracking_uri: str, names: list[str] | None = None) -> SyncReport:
    """Bring MLflow's registry in step with the studio's for ``names`` (default: every name)."""
    return push(tracking_uri, load(session, names))


def push(tracking_uri: str, by_name: dict[str, list[VersionRow]]) -> SyncReport:
    """Make MLflow hold ``by_name``'s versions and aliases. Raises ``MirrorUnavailable`` when MLflow
    fails; what was done before stays done."""
    report = SyncReport()
    if not by_name:
        return report
    try:
        client = mlflow_client(tracking_uri)
        for name, versions in by_name.items():
            _sync_name(client, name, versions, report)
    except Exception as e:  # noqa: BLE001 — MLflow's REST, SQL and file errors alike mean "not now"
        raise MirrorUnavailable(
            f"MLflow at {redacted_url(tracking_uri)} did not take the registry mirror "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})",
            "the studio's registry is unchanged; the scheduler retries every STUDIO_MLFLOW_SYNC_INTERVAL_S, "
            "or run `studio models mlflow-sync` once MLflow is back") from e
    return report


def _sync_name(client, name: str, versions: list[VersionRow], report: SyncReport) -> None:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        model = client.create_registered_model(
            name, tags={"studio.registry": "true"},
            description="Mirrored from the LLM Studio registry (studio.registry.mlflow_mirror).")
    have: dict[int, str] = {}  # studio version -> MLflow version
    for mlv in client.search_model_versions(f"name = '{_quoted(name)}'", max_results=10_000):
        tag = (mlv.tags or {}).get(VERSION_TAG)
        if tag and tag.isdigit():
            have[int(tag)] = str(mlv.version)
    changed = False
    for mv in versions:
        if mv.version in have:
            continue
        mlv = _create_version(client, name, mv)
        have[mv.version] = str(mlv.version)
        report.created.append(f"{name}@{mv.version}")
        changed = True
        if str(mlv.version) != str(mv.version) and name not in report.drifted:
            report.drifted.append(name)
            logger.warning("MLflow numbers %s@%s as version %s (versions were registered there by hand); "
                           "the studio's links name the studio's number", name, mv.version, mlv.version)
    current = dict(getattr(model, "aliases", None) or {})
    for alias, version in wanted_aliases(versions).items():
        target = have.get(version) if version is not None else None
        if target is None:
            if alias in current:
                client.delete_registered_model_alias(name, alias)
                report.aliases.append(f"{name}@{alias} removed")
                changed = True
        elif str(current.get(alias)) != target:
            client.set_registered_model_alias(name, alias, target)
            report.aliases.append(f"{name}@{alias} → {target}")
            changed = True
    if not changed:
        report.in_step.append(name)


def _create_version(client, name: str, mv: VersionRow):
    from mlflow.exceptions import MlflowException

    tags = version_tags(mv)
    try:
        return client.create_model_version(name, mv.uri, run_id=mv.mlflow_run_id, tags=tags)
    except MlflowException as e:
        if "Invalid model version source" not in str(e):
            raise
    # A tracking server accepts a local path as the source only inside a run's artifacts: the
    # training run logged the same adapter there (``adapter``); without a run, the source names the
    # studio's version, and the ``studio.uri`` tag keeps the path.
    source = f"runs:/{mv.mlflow_run_id}/adapter" if mv.mlflow_run_id else f"studio:/models/{name}/versions/{mv.version}"
    return client.create_model_version(name, source, run_id=mv.mlflow_run_id, tags=tags)


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")


def mirror_best_effort(settings: StudioSettings, name: str, say: Callable[[str], None] | None = None) -> str:
    """After a registration or a promotion of ``name`` (committed): sync that name now. Never
    raises; returns (and says, and logs) what happened — on failure, that it is pending and who
    retries."""
    try:
        with session_scope(settings.db_url) as s:
            versions = load(s, [name])
        report = push(settings.mlflow, versions)
        line = f"MLflow registry: {report.summary()}"
    except MirrorUnavailable as e:
        line = f"MLflow registry mirror of {name!r} pending: {e.problem}; {e.fix}"
        logger.warning(line)
    except Exception as e:  # noqa: BLE001 — e.g. the studio's database briefly unreachable; never the caller's failure
        line = (f"MLflow registry mirror of {name!r} pending: {type(e).__name__}: {e}; the scheduler retries "
                "every STUDIO_MLFLOW_SYNC_INTERVAL_S, or run `studio models mlflow-sync`")
        logger.warning(line)
    if say is not None:
        say(line)
    return line


def registry_fingerprint(session: Session) -> tuple:
    """Changes whenever a version is registered or changes stage (what the mirror follows)."""
    versions = session.execute(select(func.count(ModelVersion.id), func.max(ModelVersion.id))).one()
    stages = session.execute(select(func.count(PromotionEvent.id), func.max(PromotionEvent.id))).one()
    champions = tuple(session.execute(select(ModelVersion.name, ModelVersion.version)
                                      .where(ModelVersion.stage != "candidate")
                                      .order_by(ModelVersion.name, ModelVersion.version)).all())
    return tuple(versions), tuple(stages), champions


class MirrorPass:
    """The scheduler's retry of the mirror: every ``interval_s``, when the registry changed since
    the last successful sync (or that sync failed), one ``sync`` of every name. Its memory is only a
    shortcut: a restarted scheduler syncs once and knows again."""

    def __init__(self, settings: StudioSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.clock = clock
        self.synced: tuple | None = None  # the fingerprint MLflow was last in step with
        self.next_at = 0.0
        self.last_error: str | None = None
        self.last_report: str | None = None

    def run(self) -> SyncReport | None:
        """One check; None when it was not time yet or nothing changed."""
        if self.clock() < self.next_at:
            return None
        self.next_at = self.clock() + self.settings.mlflow_sync_interval_s
        with session_scope(self.settings.db_url) as s:
            now = registry_fingerprint(s)
            if now == self.synced or now[0][0] == 0:
                return None
            versions = load(s)
        try:
            report = push(self.settings.mlflow, versions)
        except MirrorUnavailable as e:
            if self.last_error is None:  # once per outage, not once per interval
                logger.warning("%s; %s", e.problem, e.fix)
            self.last_error = e.problem
            return None
        if self.last_error is not None:
            logger.info("MLflow registry mirror caught up after an outage: %s", report.summary())
        elif report.changed():
            logger.info("MLflow registry mirror: %s", report.summary())
        self.synced, self.last_error, self.last_report = now, None, report.summary()
        return report
