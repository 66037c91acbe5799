"""``make demo`` / ``studio demo``: the studio's main loop on the tiny model, through public
interfaces only (library calls the CLI makes, and HTTP). Each step checks its outcome and fails
loudly; a step that is not built yet is printed as such, never as done.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from studio import stack
from studio.cli.common import console, settings_with_db
from studio.data.ingest import ingest_file
from studio.errors import StudioError
from studio.jobs.follow import follow_job
from studio.models.tiny import make_tiny, reversal_example
from studio.recipes import load_recipe
from studio.settings import StudioSettings
from studio.train.spec import TrainSpec

NOT_YET = [
    "A/B experiment alias base vs adapter, feedback, preference export (serving: experiments)",
    "DPO from the feedback snapshot (the loop issue)",
    "gateway usage/cost table (gateway)",
]
TINY_SERVE_CONFIG = stack.DEFAULT_SERVE_CONFIG.with_name("studio_tiny.yaml")
SFT_RECIPE = stack.DEFAULT_SERVE_CONFIG.parents[1] / "train" / "sft_reverse_tiny.yaml"


def write_reversal_files(out_dir: Path, n_train: int = 2000, n_test: int = 200, seed: int = 0) -> tuple[Path, Path]:
    """The demo task as prompt/completion JSONL: train and a disjoint test split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rows: list[dict[str, str]] = []
    while len(rows) < n_train + n_test:
        prompt, answer = reversal_example(rng)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "completion": answer})
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = out_dir / "reverse_train.jsonl", out_dir / "reverse_test.jsonl"
    for path, part in zip(paths, (rows[:n_train], rows[n_train:]), strict=True):
        path.write_text("".join(json.dumps(r) + "\n" for r in part))
    return paths


def _step(n: int, title: str, fn: Callable[[], Any]) -> Any:
    console.rule(f"[bold]{n}. {title}")
    t0 = time.monotonic()
    try:
        result = fn()
    except StudioError:
        console.print(f"[red]step {n} failed[/] after {time.monotonic() - t0:.1f} s")
        raise
    console.print(f"[green]✓[/] {title} ({time.monotonic() - t0:.1f} s)")
    return result


def run_demo(exit_at_end: bool = False, eval_rows: int = 100) -> None:
    settings = settings_with_db()
    t_start = time.monotonic()

    model_dir = _step(1, "build the tiny model", lambda: make_tiny(settings.models_dir / "tiny"))
    console.print(f"model: {model_dir}")

    _step(2, "start the local stack (Ray + Serve + the tiny model on vLLM)",
          lambda: stack.up(settings, _serve_config_for(settings, model_dir)))
    key_file, _ = stack.ensure_admin_key(settings)
    admin_key = settings.admin_key or key_file.read_text().strip()
    api = httpx.Client(base_url=settings.base_url, headers={"Authorization": f"Bearer {admin_key}"},
                       timeout=60)

    def ingest() -> None:
        train, test = write_reversal_files(settings.home_abs / "demo-data")
        for path, name in ((train, "reverse-train"), (test, "reverse-test")):
            r = ingest_file(path, name, settings)
            console.print(f"  {name}@{r.version}: {r.row_count} {r.kind} rows, {r.rejected_count} rejected, "
                          f"snapshot {r.snapshot_id[:12]}")
    _step(3, "ingest the digit-reversal data", ingest)

    test_rows = api.get("/api/datasets/reverse-test/rows", params={"limit": eval_rows}).raise_for_status().json()["rows"]
    base_em = _step(4, "evaluate the base model through /v1 (exact match)",
                    lambda: _exact_match(settings, admin_key, "tiny", test_rows))
    console.print(f"  tiny (base): exact match {base_em:.2f} on {len(test_rows)} held-out rows")

    def train() -> str:
        spec = load_recipe(SFT_RECIPE, TrainSpec, [f"base_model={model_dir}"])
        r = api.post("/api/jobs", json=spec.model_dump(mode="json", by_alias=True))
        if r.status_code != 201:
            raise StudioError(f"POST /api/jobs answered {r.status_code}: {r.text[:300]}", "see the message")
        job_id = r.json()["id"]
        console.print(f"  job {job_id} queued; following it (SFT LoRA, 2 Ray Train workers)")
        shown = -100
        for event in follow_job(settings, job_id):
            if event.kind == "status":
                console.print(f"  [{event.data.get('status')}] {event.data.get('reason', '')}", highlight=False)
            elif event.kind == "progress" and event.data.get("step") is not None:
                step, total = event.data["step"], event.data.get("total")
                if step - shown >= 25 or step == total:
                    shown = step
                    console.print(f"  step {step}/{total or '?'}", highlight=False)
        job = api.get(f"/api/jobs/{job_id}").raise_for_status().json()
        if job["status"] != "SUCCEEDED":
            raise StudioError(f"job {job_id} ended {job['status']}: {job.get('error')}", f"studio jobs logs {job_id}")
        return job["result"]["model"]
    version = _step(5, "fine-tune with SFT LoRA on Ray Train (submitted over HTTP)", train)
    console.print(f"  registered {version}")

    def compare() -> float:
        name = version.split("@")[0]
        em = _exact_match(settings, admin_key, name, test_rows)
        console.print(f"  {'model':<16} exact match")
        console.print(f"  {'tiny (base)':<16} {base_em:.2f}")
        console.print(f"  {version:<16} {em:.2f}   (hot-loaded by the router, no redeploy)")
        if em < 0.9:
            raise StudioError(f"{version} reached exact match {em:.2f}, below 0.9", "see the job's metrics")
        return em
    _step(6, "serve the new version without a redeploy and compare", compare)

    def promote() -> None:
        r = api.post(f"/api/models/{version}/promote", json={"stage": "champion"})
        if r.status_code != 200:
            raise StudioError(f"promote answered {r.status_code}: {r.text[:200]}", "see the message")
        console.print(f"  {version} is now the champion of {version.split('@')[0]}")
    _step(7, "promote the adapter", promote)

    console.rule("[bold]not built yet")
    for item in NOT_YET:
        console.print(f"  [yellow]skipped[/] {item}: not implemented in this version")
    _summary(settings, key_file)
    console.print(f"demo finished in {time.monotonic() - t_start:.0f} s")
    if exit_at_end:
        stack.down(settings)
        console.print("stack stopped (--exit)")


def _serve_config_for(settings: StudioSettings, model_dir: Path) -> Path:
    """configs/serve/studio_tiny.yaml with the model path pointing at this STUDIO_HOME's tiny model."""
    import yaml

    cfg = yaml.safe_load(TINY_SERVE_CONFIG.read_text())
    for app in cfg["applications"]:
        for model in app.get("args", {}).get("models", []):
            model["engine"]["model"] = str(model_dir)
    out = settings.home_abs / "serve-demo.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def _exact_match(settings: StudioSettings, key: str, model: str, rows: list[dict[str, Any]]) -> float:
    """Greedy answers through the studio's OpenAI endpoint, compared with the reference."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(row: dict[str, Any]) -> bool:
        r = httpx.post(f"{settings.base_url}/v1/chat/completions", timeout=120,
                       headers={"Authorization": f"Bearer {key}"},
                       json={"model": model, "temperature": 0, "max_tokens": 16,
                             "messages": [{"role": "user", "content": row["prompt"]}]})
        if r.status_code != 200:
            raise StudioError(f"/v1/chat/completions for {model} answered {r.status_code}: {r.text[:200]}",
                              "see the Serve logs in the Ray dashboard")
        return r.json()["choices"][0]["message"]["content"].strip() == row["completion"].strip()

    with ThreadPoolExecutor(8) as pool:
        hits = list(pool.map(ask, rows))
    return sum(hits) / len(hits)


def _summary(settings: StudioSettings, key_file: Path) -> None:
    console.rule("[bold]where things are")
    console.print(f"studio API   {settings.base_url}/api/docs   (health: {settings.base_url}/healthz)")
    console.print(f"Ray dashboard http://127.0.0.1:{settings.dashboard_port}")
    console.print(f"admin key    {key_file}")
    console.print("stop with    studio down")
