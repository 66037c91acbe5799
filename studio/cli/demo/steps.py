"""The demo's steps (``Demo``), each through public interfaces only, each checking its outcome."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from studio import stack
from studio.cli.common import console
from studio.cli.demo.profile import (
    ALIAS,
    DPO_RECIPE,
    FEEDBACK_DATASET,
    NAME,
    SFT_RECIPE,
    TINY_SERVE_CONFIG,
    DemoError,
    DemoResult,
    Profile,
)
from studio.jobs.follow import follow_job
from studio.mlflow_links import ui_url as mlflow_ui_url
from studio.models.tiny import make_tiny
from studio.recipes import load_recipe
from studio.settings import StudioSettings
from studio.train.spec import TrainSpec
from studio.train.toy_data import write_reversal_files


class Demo:
    def __init__(self, settings: StudioSettings, profile: Profile, serve_config: Path | None = None):
        self.settings = settings
        self.p = profile
        self.serve_config = serve_config
        self.result = DemoResult()
        self.api: httpx.Client | None = None
        self.admin_key = ""
        self.model_dir: Path | None = None

    # ------------------------------------------------------------ plumbing

    def step(self, n: int, title: str, fn: Callable[[], Any]) -> Any:
        console.rule(f"[bold]{n}. {title}")
        t0 = time.monotonic()
        try:
            out = fn()
        except Exception as e:  # said here too: with --exit, stopping the stack comes before the CLI's report
            console.print(f"[red]✗ step {n} failed[/] after {time.monotonic() - t0:.1f} s: {title}\n  {e}",
                          highlight=False)
            raise
        took = time.monotonic() - t0
        self.result.step_seconds[f"{n}. {title}"] = round(took, 1)
        console.print(f"[green]✓[/] {n}. {title} ({took:.1f} s)")
        return out

    def call(self, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kw) -> Any:
        r = self.api.request(method, path, **kw)
        if r.status_code not in expect:
            try:
                detail = r.json().get("detail") or r.text
            except ValueError:
                detail = r.text
            raise DemoError(f"{method} {path} answered {r.status_code}: {str(detail)[:400]}",
                            "see the message; `studio status` and the Ray dashboard show what runs")
        return r.json()

    def follow_training(self, job_id: int) -> dict[str, Any]:
        """Status changes, steps and loss of a job until it ends; the job, which must have SUCCEEDED."""
        shown, loss = -1000, None
        t0 = time.monotonic()
        for event in follow_job(self.settings, job_id):
            if event.kind == "status":
                console.print(f"  [{event.data.get('status')}] {event.data.get('reason', '')}", highlight=False)
            elif event.kind == "progress" and event.data.get("step") is not None:
                step, total = event.data["step"], event.data.get("total")
                if step - shown >= max(1, (total or 200) // 8) or step == total:
                    shown = step
                    loss = self._last_loss(job_id) or loss
                    console.print(f"  step {step}/{total or '?'}"
                                  + (f"  loss {loss:.4f}" if loss is not None else "")
                                  + f"  ({time.monotonic() - t0:.0f} s)", highlight=False)
        job = self.call("GET", f"/api/jobs/{job_id}")
        if job["status"] != "SUCCEEDED":
            raise DemoError(f"job {job_id} ended {job['status']}: {job.get('error')}",
                            f"studio jobs logs {job_id} shows why")
        return job

    def _last_loss(self, job_id: int) -> float | None:
        series = self.call("GET", f"/api/jobs/{job_id}/metrics")["metrics"].get("loss")
        return series[-1]["value"] if series else None

    def promote_through_gate(self, ref: str) -> dict[str, Any]:
        """``POST /api/models/{ref}/promote`` as ``studio models promote`` does it: a 202 means the
        gate queued an eval — watch it, then ask again. The gate's outcome (promoted or refused)."""
        from studio.cli.eval import watch

        for _ in range(3):
            r = self.api.post(f"/api/models/{ref}/promote", json={"stage": "champion"})
            if r.status_code == 200:
                return r.json()["promotion"]
            if r.status_code == 409:
                return {"outcome": "refused", "reason": r.json().get("detail", r.text)}
            if r.status_code != 202:
                raise DemoError(f"promote {ref} answered {r.status_code}: {r.text[:300]}", "see the message")
            eval_id = r.json()["promotion"]["eval_id"]
            console.print(f"  the gate queued eval {eval_id}: {r.json()['promotion']['reason']}", highlight=False)
            if watch(self.settings, eval_id) != 0:
                raise DemoError(f"the gate's eval {eval_id} did not succeed", f"studio eval show {eval_id}")
        raise DemoError(f"the gate gave no verdict on {ref} after its eval", f"studio models promotions {NAME}")

    def run_eval(self, title: str, models: list[str]) -> dict[str, float]:
        """An eval run of ``models`` on the test split through ``POST /api/evals``, shown as the live
        leaderboard; returns exact match per model."""
        from studio.cli.eval import watch

        spec = {"name": title, "dataset": "reverse-test", "models": models, "limit": self.p.eval_limit,
                "generation": {"max_tokens": 16, "temperature": 0}, "scorers": [{"type": "exact_match"}],
                "concurrency": 16}
        ev = self.call("POST", "/api/evals", json=spec)
        console.print(f"  eval {ev['id']}: {', '.join(models)} on reverse-test ({self.p.eval_limit} rows)",
                      highlight=False)
        ok = watch(self.settings, ev["id"]) == 0
        console.print()
        if not ok:
            raise DemoError(f"eval {ev['id']} did not succeed", f"studio eval show {ev['id']}")
        board = self.call("GET", f"/api/evals/{ev['id']}")["leaderboard"]
        em = {r["model"]: r["mean"] for r in board["scores"] if r["scorer"] == "exact_match"}
        missing = [m for m in models if em.get(m) is None]
        if missing:
            raise DemoError(f"eval {ev['id']} has no exact match for {', '.join(missing)}",
                            f"studio eval show {ev['id']} --results 10")
        return em

    # ------------------------------------------------------------ the steps

    def start(self) -> None:
        s = self.settings
        self.model_dir = make_tiny(s.models_dir / "tiny")
        console.print(f"  tiny model: {self.model_dir}")
        stack.up(s, self.serve_config or _serve_config_for(s, self.model_dir))
        key_file, _ = stack.ensure_admin_key(s)
        self.admin_key = s.admin_key or key_file.read_text().strip()
        self.api = httpx.Client(base_url=s.base_url, headers={"Authorization": f"Bearer {self.admin_key}"},
                                timeout=120)
        health = stack.health(s)
        if not health:
            raise DemoError(f"the studio at {s.base_url} does not answer /healthz after `studio up`",
                            "see `studio status` and the Serve logs in the Ray dashboard")
        served = [m["id"] for m in self.call("GET", "/v1/models")["data"]]
        if "tiny" not in served:
            raise DemoError(f"the stack serves {served}, not the tiny model", "check configs/serve/studio.yaml")
        console.print(f"  studio at {s.base_url}, serving {', '.join(served)}", highlight=False)

    def ingest(self) -> None:
        from studio.data.ingest import ingest_file

        train, test = write_reversal_files(self.settings.home_abs / "demo-data", self.p.n_train, self.p.n_test)
        t = Table("dataset", "kind", "rows", "rejected", "prompt words (mean)", "answer words (mean)", "snapshot")
        for path, name in ((train, "reverse-train"), (test, "reverse-test")):
            r = ingest_file(path, name, self.settings)  # what `studio data ingest` calls
            if r.row_count == 0:
                raise DemoError(f"{name}: no rows were ingested from {path}", "see the rejected rows above")
            rows = [json.loads(line) for line in path.read_text().splitlines()]
            t.add_row(f"{name}@{r.version}", r.kind, str(r.row_count), str(r.rejected_count),
                      f"{statistics.fmean(len(x['prompt'].split()) for x in rows):.1f}",
                      f"{statistics.fmean(len(x['completion'].split()) for x in rows):.1f}", r.snapshot_id[:12])
        console.print(t)
        sample = json.loads(test.read_text().splitlines()[0])
        console.print(f"  e.g. {sample['prompt']!r} → {sample['completion']!r}", highlight=False)

    def eval_base(self) -> None:
        em = self.run_eval("demo: base", ["tiny"])["tiny"]
        self.result.base_em = em
        console.print(f"  tiny (base): exact match {em:.2f}")
        if em > self.p.max_base_em:
            raise DemoError(f"the untrained base already reaches exact match {em:.2f}: the demo's "
                            "before/after comparison would mean nothing", "rebuild the tiny model (make_tiny)")

    def train_sft(self) -> None:
        spec = load_recipe(SFT_RECIPE, TrainSpec, [f"base_model={self.model_dir}", f"name={NAME}",
                                                   *self.p.sft_overrides])
        if not self.p.sft_eval_after:
            spec.eval_after = None  # step 5 evaluates through the eval service instead
        job = self.call("POST", "/api/jobs", json=spec.model_dump(mode="json", by_alias=True))
        console.print(f"  job {job['id']} queued: SFT LoRA r={spec.lora.r}, {spec.hyper.epochs:g} epochs, "
                      f"{spec.resources.num_workers} Ray Train workers", highlight=False)
        job = self.follow_training(job["id"])
        self.result.sft_version = job["result"]["model"]
        m = job["result"].get("metrics", {})
        console.print(f"  {self.result.sft_version}: {m.get('global_step')} steps, train loss "
                      f"{m.get('train_loss', float('nan')):.4f}, {m.get('train_runtime_s', 0):.0f} s", highlight=False)

    def serve_new_version(self) -> None:
        from openai import OpenAI

        ref = self.result.sft_version
        mv = self.call("GET", f"/api/models/{NAME}")
        versions = [f"{NAME}@{v['version']}" for v in mv.get("versions", [])] if isinstance(mv, dict) else []
        if versions and ref not in versions:
            raise DemoError(f"{ref} is not in the registry ({versions})", "see `studio models ls`")
        client = OpenAI(base_url=f"{self.settings.base_url}/v1", api_key=self.admin_key, max_retries=0)
        row = json.loads((self.settings.home_abs / "demo-data" / "reverse_test.jsonl").read_text().splitlines()[0])
        raw = client.chat.completions.with_raw_response.create(
            model=ref, temperature=0, max_tokens=16, messages=[{"role": "user", "content": row["prompt"]}])
        answer = raw.parse().choices[0].message.content
        served_by = raw.headers.get("x-studio-model-version")
        if served_by != ref:
            raise DemoError(f"/v1 answered for {ref} with version {served_by!r}",
                            "the Router resolves name@N from the registry; see the Serve logs")
        console.print(f"  {ref} registered (GET /api/models/{NAME}) and answering on /v1 — no redeploy:",
                      highlight=False)
        console.print(f"  {row['prompt']!r} → {answer!r} (x-studio-model-version: {served_by})", highlight=False)

    def compare(self) -> None:
        ref = self.result.sft_version
        em = self.run_eval(f"demo: base vs {ref}", ["tiny", ref])
        self.result.sft_em = em[ref]
        console.print(f"  {'model':<18} exact match")
        console.print(f"  {'tiny (base)':<18} {em['tiny']:.2f}")
        console.print(f"  {ref:<18} {em[ref]:.2f}", highlight=False)
        if em[ref] < self.p.min_adapter_em:
            raise DemoError(f"{ref} reached exact match {em[ref]:.2f}, below {self.p.min_adapter_em}",
                            "see the job's loss (studio jobs show) and the answers (studio eval show)")

    def promote(self) -> None:
        ref = self.result.sft_version
        gate = {"dataset": "reverse-test", "scorer": {"type": "exact_match"}, "margin": 0.0,
                "limit": self.p.eval_limit, "generation": {"max_tokens": 16, "temperature": 0}}
        self.call("PUT", f"/api/models/{NAME}/gate", json=gate)
        console.print(f"  gate of {NAME}: exact match on reverse-test must beat the champion's")
        out = self.promote_through_gate(ref)
        self.result.promotion = out
        if out.get("outcome") != "promoted":
            raise DemoError(f"the gate did not promote {ref}: {out.get('outcome')}: {out.get('reason')}",
                            f"studio models promotions {NAME}")
        console.print(f"  {ref} → champion ({out.get('reason')}); `{NAME}` now serves it", highlight=False)

    def ab_and_feedback(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from openai import OpenAI

        ref = self.result.sft_version
        self.call("POST", "/api/experiments", json={
            "alias": ALIAS, "arms": [{"model": "tiny", "weight": 0.5}, {"model": ref, "weight": 0.5}]})
        console.print(f"  experiment {ALIAS!r}: tiny 50% / {ref} 50%", highlight=False)
        client = OpenAI(base_url=f"{self.settings.base_url}/v1", api_key=self.admin_key, max_retries=0)
        # The Router reads experiments through a short cache (per replica): wait until the alias answers.
        import openai

        deadline = time.monotonic() + 30
        while True:
            try:
                client.chat.completions.create(model=ALIAS, max_tokens=1,
                                               messages=[{"role": "user", "content": "reverse: 1"}])
                break
            except openai.NotFoundError as e:
                if time.monotonic() > deadline:
                    raise DemoError(f"/v1 does not know {ALIAS!r} 30 s after it was created: {e}",
                                    "see the Router's logs in the Ray dashboard (Serve)") from e
                time.sleep(0.5)
        # Training prompts, never the held-out test split: this feedback becomes DPO data here and in
        # the loop (whose snapshot drops every prompt of its gate's golden set, reverse-test).
        rows = [json.loads(x) for x in
                (self.settings.home_abs / "demo-data" / "reverse_train.jsonl").read_text().splitlines()]
        rows = rows[-self.p.ab_prompts:]

        def ask(job: tuple[dict[str, str], float]) -> tuple[str, bool, str]:
            # Greedy and sampled traffic: greedily the adapter is right and the untrained base mostly
            # answers nothing (an immediate end of text); sampled at temperature 1 both answer wrong
            # text. A preference pair needs text on both sides: right (greedy) vs wrong (sampled).
            row, temperature = job
            r = client.chat.completions.with_raw_response.create(
                model=ALIAS, temperature=temperature, max_tokens=16,
                messages=[{"role": "user", "content": row["prompt"]}])
            c = r.parse()
            return c.id, c.choices[0].message.content.strip() == row["completion"], r.headers.get("x-studio-arm", "?")

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, [(r, t) for r in rows for t in
                                          [0.0] * self.p.ab_repeats + [1.0] * self.p.ab_sampled]))
        per_arm: dict[str, list[bool]] = {}
        for _, ok, arm in answers:
            per_arm.setdefault(arm, []).append(ok)
        console.print(f"  {len(answers)} requests through the alias with the openai client "
                      f"({self.p.ab_repeats} greedy + {self.p.ab_sampled} sampled per prompt): "
                      + ", ".join(f"{arm} {len(v)} ({sum(v)} correct)" for arm, v in sorted(per_arm.items())),
                      highlight=False)
        if len(per_arm) < 2:
            raise DemoError(f"only arm(s) {sorted(per_arm)} answered {len(answers)} requests",
                            f"check the experiment (GET /api/experiments/{ALIAS})")

        def rate(a: tuple[str, bool, str]) -> None:
            self.call("POST", "/v1/feedback", json={"completion_id": a[0], "rating": 1 if a[1] else -1})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(rate, answers))
        self.result.feedback = {"positive": sum(ok for _, ok, _ in answers),
                                "negative": sum(not ok for _, ok, _ in answers)}
        console.print(f"  feedback on POST /v1/feedback: {self.result.feedback['positive']} correct answers +1, "
                      f"{self.result.feedback['negative']} wrong ones -1")
        stats = self.call("GET", f"/api/experiments/{ALIAS}")
        self.result.experiment = stats
        t = Table("arm", "weight", "requests", "versions", "p50 latency ms", "ratings", "mean rating")
        for arm in stats["arms"]:
            t.add_row(arm["model"], f"{arm.get('weight', 0):g}", str(arm.get("requests")),
                      ", ".join(arm.get("versions") or []), _fmt(arm.get("latency_ms_p50"), 1),
                      str(arm.get("ratings")), _fmt(arm.get("rating_mean"), 2))
        console.print(t)
        exp = self.call("POST", f"/api/experiments/{ALIAS}/export", json={"name": FEEDBACK_DATASET})
        self.result.preference_dataset = exp
        if not exp.get("rows"):
            raise DemoError(f"the export of {ALIAS} holds no preference rows", "rate both arms' answers to a prompt")
        console.print(f"  exported {exp['rows']} (prompt, chosen, rejected) rows as {exp['ref']} "
                      f"(kind {exp['kind']}, snapshot {exp['snapshot_id'][:12]})", highlight=False)

    def train_dpo(self) -> None:
        sft, data = self.result.sft_version, self.result.preference_dataset["ref"]
        spec = load_recipe(DPO_RECIPE, TrainSpec, [f"base_model={self.model_dir}", f"name={NAME}",
                                                   f"data.dataset={data}", f"init_adapter={sft}",
                                                   *self.p.dpo_overrides])
        job = self.call("POST", "/api/jobs", json=spec.model_dump(mode="json", by_alias=True))
        console.print(f"  job {job['id']} queued: DPO on {data}, starting from {sft} (reference: a frozen "
                      f"copy of {sft}), beta {spec.dpo.beta:g}, {spec.hyper.max_steps} steps", highlight=False)
        job = self.follow_training(job["id"])
        ref = self.result.dpo_version = job["result"]["model"]
        lineage = self.call("GET", f"/api/models/{ref}/lineage")
        if lineage.get("init_adapter") != sft:
            raise DemoError(f"{ref}'s lineage names init_adapter {lineage.get('init_adapter')!r}, not {sft}",
                            "see GET /api/models/{ref}/lineage")
        console.print(f"  registered {ref} (lineage: from {sft}, data {data})", highlight=False)
        em = self.run_eval(f"demo: base vs {sft} vs {ref}", ["tiny", sft, ref])
        self.result.dpo_em = em[ref]
        console.print(f"  exact match: tiny {em['tiny']:.2f}, {sft} {em[sft]:.2f}, {ref} {em[ref]:.2f}",
                      highlight=False)
        if em[ref] < self.p.min_adapter_em:
            raise DemoError(f"{ref} (DPO from {sft}) fell to exact match {em[ref]:.2f}", "see the DPO job's metrics")
        out = self.promote_through_gate(ref)
        self.result.dpo_gate = out
        console.print(f"  gate: {ref} {out.get('outcome')} — {out.get('reason')}", highlight=False)

    def summary(self) -> None:
        from studio.cli.eval import leaderboard_tables

        board = self.call("GET", "/api/evals/leaderboard", params={"dataset": "reverse-test"})
        self.result.leaderboard = board
        console.print(leaderboard_tables(board, "leaderboard: every eval on reverse-test, by version"))
        usage = self.call("GET", "/api/usage", params={"group_by": "service,model"})["rows"]
        self.result.usage = usage
        t = Table("service", "model", "calls", "prompt tok", "completion tok", "cost USD", title="gateway usage",
                  title_justify="left")
        for r in usage:
            t.add_row(str(r.get("service")), str(r.get("model")), str(r.get("calls")),
                      str(r.get("prompt_tokens", "-")), str(r.get("completion_tokens", "-")),
                      f"{r.get('cost_usd', 0) or 0:.6f}")
        console.print(t)
        s = self.settings
        console.print(f"studio API     {s.base_url}/api/docs   (OpenAI: {s.base_url}/v1, UI: {s.base_url}/ui)")
        console.print(f"Ray dashboard  http://127.0.0.1:{s.dashboard_port}")
        ui = mlflow_ui_url(s)
        console.print(f"MLflow         {ui}   (registered model {NAME}, @champion)" if ui else
                      f"MLflow         {s.mlflow}   (browse: mlflow ui --backend-store-uri {s.mlflow})")
        console.print(f"admin key      {s.home_abs / 'admin.key'}")


    def loop(self) -> None:
        from studio.cli.demo.loop_step import run_generation

        self.result.loop = run_generation(self.api, self.settings, self.admin_key, rate=self.p.loop_rate)


def _fmt(x: Any, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _serve_config_for(settings: StudioSettings, model_dir: Path) -> Path:
    """configs/serve/studio.yaml with the model path pointing at this STUDIO_HOME's tiny model."""
    import yaml

    cfg = yaml.safe_load(TINY_SERVE_CONFIG.read_text())
    for app in cfg["applications"]:
        for model in app.get("args", {}).get("models", []):
            model["engine"]["model"] = str(model_dir)
    out = settings.home_abs / "serve-demo.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out
