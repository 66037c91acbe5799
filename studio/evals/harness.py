"""lm-evaluation-harness as an eval kind: ``scorers: [{type: lm_eval, task: NAME}]`` runs the task
with lm-eval (``lm_eval.simple_evaluate``) against each model of the spec, as lm-eval's
``local-chat-completions`` (or ``local-completions``) model pointed at the studio's own gateway.

- Where the calls go: ``studio.gateway.gateway_url()`` (the studio's ``/gateway/v1``, from the
  server's settings; nothing in the spec names a host), with the job's gateway headers (its
  submitter's key, ``x-studio-service: eval``, ``x-studio-job-id: eval-N``, the job's concurrency
  cap): every call is a usage row of the job's key, as the other scorers' calls are.
- Tasks: lm-eval's own index plus the tasks shipped in ``configs/eval/tasks/`` (``TASKS_DIR``).
  A name that is not in the index is refused when the spec is queued, with the closest names
  (``check_tasks``); lm-eval's index takes 10-25 s to build here (it parses ~15,000 YAML files),
  so its names are cached per lm-eval installation in ``$XDG_CACHE_HOME/studio/`` (default
  ``~/.cache/studio/``) and in the process: they depend on the installed package only.
- Results: each document one model answered is an ``eval_outputs`` row (datapoint ``k·10⁶ + doc``
  for the spec's k-th scorer), its per-document metric an ``eval_scores`` row under the scorer's
  name: the leaderboard, the results pages, the event stream and the promotion gate read them as
  they read any scorer's. lm-eval's own aggregates (with its standard errors) are kept per task and
  model in ``result.lm_eval``, which also says how far the run is (one entry per finished task ×
  model, the event stream's ``task`` events).
- Resume and cancel: a (task, model) whose documents are stored is not run again; the job row is
  read for a cancel between two of them.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from studio.errors import NotFound, StudioError
from studio.evals.spec import EvalSpec
from studio.scorer_specs import scorer_name
from studio.store.db import session_scope
from studio.store.models import EvalOutput, EvalScore, Job

logger = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parents[2] / "configs" / "eval" / "tasks"


def _own_dirs() -> list[Path]:
    # A studio installed without its repository (a wheel on a cluster node) has no configs/.
    return [TASKS_DIR] if TASKS_DIR.is_dir() else []
# Datapoint numbers of the k-th lm_eval scorer start at k * DOCS_PER_SCORER (a task's doc ids are below).
DOCS_PER_SCORER = 1_000_000
GENERATE = "generate_until"


class HarnessMissing(StudioError):
    """lm-eval is not installed where the studio runs."""


def _lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise HarnessMissing("lm_eval scorers need lm-evaluation-harness, which is not installed here",
                             "install the studio's locked environment (make setup), which includes "
                             "lm-eval[api]", status_code=501) from e
    return lm_eval


# ---------------------------------------------------------------- the task index
def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "studio"


@functools.lru_cache(maxsize=4)
def _builtin_index(version: str, package_dir: str) -> dict[str, str | None]:
    """lm-eval's own tasks, groups and tags → the task's output_type (None: a group or tag).
    Building the index parses every task YAML: kept in a file per lm-eval installation."""
    digest = hashlib.sha256(package_dir.encode()).hexdigest()[:12]
    path = _cache_dir() / f"lm_eval-{version}-{digest}-tasks.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    from lm_eval.tasks import TaskManager

    index = _output_types(TaskManager(include_defaults=True).task_index)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index))
        tmp.replace(path)
    except OSError as e:  # a read-only home: the process cache still holds it
        logger.warning("lm-eval task index not cached in %s: %s", path, e)
    return index


def _output_types(index: dict[str, Any]) -> dict[str, str | None]:
    from lm_eval.tasks._index import Kind

    return {name: ((e.cfg or {}).get("output_type", GENERATE) if e.kind is Kind.TASK else None)
            for name, e in index.items()}


def task_index() -> dict[str, str | None]:
    """Every task name lm-eval knows here → its output_type (None for groups, tags, Python tasks):
    lm-eval's own and the studio's (``configs/eval/tasks/``, read each time: a few files)."""
    lm_eval = _lm_eval()
    from lm_eval.tasks._index import TaskIndex

    index = dict(_builtin_index(lm_eval.__version__, str(Path(lm_eval.__file__).parent)))
    index.update(_output_types(TaskIndex.build(_own_dirs())))
    return index


def check_tasks(spec: EvalSpec) -> None:
    """Refuse (404, with the closest names) a task lm-eval does not know, and a task whose documents
    are not generated (loglikelihood, multiple choice: they need token log-probabilities)."""
    index = task_index()
    for s in spec.scorers:
        if s.task not in index:
            close = difflib.get_close_matches(s.task, list(index), n=5, cutoff=0.6)
            raise NotFound(f"lm_eval scorer {scorer_name(s)!r}: lm-eval has no task named {s.task!r}",
                           (f"did you mean {', '.join(close)}? " if close else "")
                           + "list the tasks with `lm_eval ls tasks`; the studio's own are the YAML files of "
                           "configs/eval/tasks/")
        kind = index[s.task]
        if kind is not None and kind != GENERATE:
            raise StudioError(f"lm_eval scorer {scorer_name(s)!r}: task {s.task!r} is a {kind} task, which "
                              "needs the prompt's token log-probabilities; the gateway returns generated text",
                              "pick a generate_until task (the answer is generated and compared)")


# ---------------------------------------------------------------- the run
def _stored(db_url: str, job_id: int) -> set[tuple[int, str]]:
    """(scorer index, model) pairs whose documents an earlier attempt stored."""
    with session_scope(db_url) as s:
        rows = s.execute(select(EvalOutput.datapoint, EvalOutput.model).where(EvalOutput.job_id == job_id)).all()
    return {(dp // DOCS_PER_SCORER, model) for dp, model in rows}


def _prompt(args: Any) -> Any:
    """The prompt of a logged sample's first request: (prompt, gen_kwargs), where a chat prompt is the
    messages as JSON (lm-eval's JsonChatStr, logged as a one-item list)."""
    text = args
    while isinstance(text, list | tuple) and text:
        text = text[0]
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def _number(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    return float(x) if isinstance(x, int | float) else None


class LmEvalRun:
    """An eval whose scorers are lm_eval: each task × model is one ``simple_evaluate`` (lm-eval
    then the gateway), stored when it ends. ``client`` is the job's ``studio.gateway.Client`` (its
    base URL and headers are what lm-eval sends with)."""

    def __init__(self, db_url: str, job_id: int, spec: EvalSpec, client: Any):
        self.db_url, self.job_id, self.spec, self.client = db_url, job_id, spec, client

    async def run(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        done = _stored(self.db_url, self.job_id)
        answered, manager = 0, None
        for k, scorer in enumerate(self.spec.scorers):
            for model in self.spec.models:
                if (k, model) in done:
                    continue
                self._check_cancel()
                if manager is None:
                    manager = await asyncio.to_thread(self._task_manager)
                started = time.perf_counter()
                out = await asyncio.to_thread(self._evaluate, manager, scorer, model)
                answered += self._store(k, scorer, model, out, time.perf_counter() - started)
        return {"rows": None, "answered": answered, "skipped_stored": len(done),
                "wall_s": round(time.perf_counter() - t0, 3)}

    def _check_cancel(self) -> None:
        from studio.evals.runner import RunCancelled

        with session_scope(self.db_url) as s:
            job = s.get(Job, self.job_id)
            if job.cancel_requested or job.status in ("CANCELLED", "FAILED", "SUCCEEDED"):
                raise RunCancelled(f"eval {self.job_id} is {job.status}")

    def _task_manager(self) -> Any:
        _lm_eval()
        from lm_eval.tasks import TaskManager
        from lm_eval.tasks._index import TaskIndex

        # lm-eval's own index costs 10-25 s to build: only when a task is not one of the studio's.
        own = TaskIndex.build(_own_dirs())
        defaults = any(s.task not in own for s in self.spec.scorers)
        return TaskManager(include_path=[str(d) for d in _own_dirs()] or None, include_defaults=defaults)

    def _model(self, scorer: Any, model: str) -> Any:
        from lm_eval.models.openai_completions import LocalChatCompletion, LocalCompletionsAPI

        chat = scorer.model_type == "local-chat-completions"
        base_url, headers = self.client.http_target()
        cls = LocalChatCompletion if chat else LocalCompletionsAPI
        # No tokenizer: the served model's own applies (and none can be downloaded here); requests go
        # as text, so only generated answers are scored (check_tasks refused the rest).
        return cls(model=model, base_url=f"{base_url}/{'chat/completions' if chat else 'completions'}",
                   header=headers, tokenizer_backend=None, tokenized_requests=False,
                   num_concurrent=self.spec.concurrency, max_retries=2, timeout=300)

    def _evaluate(self, manager: Any, scorer: Any, model: str) -> dict[str, Any]:
        import lm_eval

        logger.info("lm_eval: task %s on %s", scorer.task, model)
        out = lm_eval.simple_evaluate(
            model=self._model(scorer, model), tasks=[scorer.task], task_manager=manager,
            num_fewshot=scorer.num_fewshot, limit=self.spec.limit, log_samples=True, bootstrap_iters=0,
            system_instruction=self.spec.system_prompt,
            apply_chat_template=scorer.model_type == "local-chat-completions")
        if out is None:
            raise StudioError(f"lm-eval returned no results for task {scorer.task!r} on {model!r}")
        return out

    def _store(self, k: int, scorer: Any, model: str, out: dict[str, Any], seconds: float) -> int:
        name = scorer_name(scorer)
        rows: list[Any] = []
        seen: set[tuple[str, int]] = set()
        for task, samples in sorted((out.get("samples") or {}).items()):
            chosen_filter = scorer.filter or (samples[0].get("filter") if samples else None)
            filters = sorted({str(x.get("filter")) for x in samples})
            if samples and chosen_filter not in filters:
                raise StudioError(f"lm_eval scorer {name!r}: task {task!r} has no filter {chosen_filter!r}",
                                  f"use one of {', '.join(filters)} (or leave filter out: the first)")
            for sample in samples:
                if sample.get("filter") != chosen_filter or (task, sample["doc_id"]) in seen:
                    continue
                seen.add((task, sample["doc_id"]))
                dp = k * DOCS_PER_SCORER + len(seen) - 1
                metric = scorer.metric or (sample.get("metrics") or [None])[0]
                resps = sample.get("filtered_resps") or sample.get("resps") or [None]
                output = resps[0][0] if isinstance(resps[0], list | tuple) else resps[0]
                rows.append(EvalOutput(job_id=self.job_id, datapoint=dp, model=model,
                                       input=_prompt((sample.get("arguments") or [None])[0]),
                                       reference=None if sample.get("target") is None else str(sample["target"]),
                                       output=None if output is None else str(output)))
                value = _number(sample.get(metric)) if metric else None
                rows.append(EvalScore(
                    job_id=self.job_id, datapoint=dp, model=model, scorer=name, score=value,
                    status="scored" if value is not None else "unscored",
                    reason=f"lm-eval {task} doc {sample['doc_id']}: {metric}"
                    + ("" if value is not None else f" is not in its results ({', '.join(sample.get('metrics') or [])})"),
                    raw=None))
        entry = {"scorer": name, "task": scorer.task, "model": model, "docs": len(seen),
                 "seconds": round(seconds, 2), "results": _plain(out.get("results") or {})}
        with session_scope(self.db_url) as s:
            s.add_all(rows)
            job = s.get(Job, self.job_id)
            job.result = {**(job.result or {}), "lm_eval": [*(job.result or {}).get("lm_eval", []), entry]}
        logger.info("lm_eval: task %s on %s: %d documents in %.1f s", scorer.task, model, len(seen), seconds)
        print(f"[studio.evals] lm_eval task {scorer.task} on {model}: {len(seen)} documents in {seconds:.1f} s",
              flush=True)
        return len(seen)


def _plain(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """lm-eval's per-task aggregates as JSON (numbers and strings; ``N/A`` stderr kept as text)."""
    return {task: {k: v for k, v in metrics.items() if isinstance(v, str | int | float) and v == v}
            for task, metrics in results.items()}
