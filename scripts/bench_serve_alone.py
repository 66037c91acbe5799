"""Serving benchmark, each server alone: raw vLLM, Ray Serve LLM and the studio (``/v1``,
``/gateway/v1``), one at a time on an otherwise idle stack.

    flock /tmp/heavy.lock .venv/bin/python scripts/bench_serve_alone.py [--rounds 2] [--tokens 64]
        [--out docs/bench/serve-alone.json]      (also: scripts/bench_serve.py --alone ...)
    ... scripts/bench_serve_alone.py --profile [--profile-s 20] [--out docs/bench/serve-profile.json]

Every round starts each server in turn (the order rotated per round), warms it up, measures it,
stops it and checks that every process it started is gone, so no server runs beside another (side
by side, each idle server still takes CPU and memory from the measured one; on a 2-core box that
moved the ratios by ±10 %). The servers:

- ``raw_vllm``: vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``) with the
  engine arguments of configs/serve/studio.yaml (float32, max_model_len 512, LoRA on with max_loras
  4 and rank 16, max_num_seqs 16, eager, stream_interval 8, hermes tool parser with auto tool
  choice, 1 GiB KV cache on CPU); one adapter loaded with ``/v1/load_lora_adapter``. On CPU its
  default executor (``mp``) runs the model in a worker process beside the EngineCore, the two
  busy-polling a shared-memory queue; ``--raw-executor uni`` runs it as the studio's engine does:
  the model inside the EngineCore (``--distributed-executor-backend uni`` with
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0``, which vLLM's CPU platform needs to keep ``uni``), one
  OpenMP thread, every EngineCore thread bound to the core vLLM's ``auto`` binding gives its worker
  (core 0 of 2): the anchor that differs from the studio only by the path in front of the engine;
- ``ray_serve_llm``: Ray Serve LLM (``ray.serve.llm.build_openai_app``), same engine arguments, on a
  Ray of its own (a child process of this script), Serve's high-throughput mode as the studio's;
  base model only (its LoRA loading takes a cloud storage path);
- ``studio``: ``studio up --config configs/serve/studio.yaml`` with a STUDIO_HOME and ports of its
  own (MLflow UI off), measured on ``/v1`` (base and one registry version, an adapter) and on
  ``/gateway/v1`` (the LiteLLM gateway relaying the same model).

Per server and round: ``os.getloadavg()`` before each point; streaming chat (``ignore_eos``,
``--tokens`` tokens each, through the official ``openai`` client) at 1, 8 and 32 clients (tokens/s,
TTFT p50/p99, end-to-end latency p50); the CPU seconds each of the server's processes used during
the 8-client point (per 1000 output tokens); and for the engine processes what they really got:
threads, the CPU list of each thread (``/proc/PID/task/*/status``), ``taskset -pc``, the
``OMP_*``/``GOMP_*``/``KMP_*`` variables of ``/proc/PID/environ``. Ratios are medians over rounds
of each round's studio/raw (and studio/Ray Serve LLM) pairs.

``--profile``: the studio alone under 8 clients, ``py-spy record`` on every Python process of the
stack at once (the ingress, Router, model replica, engine core, proxies and Ray's own) plus
CPU seconds per process, and the same for raw vLLM: the top frames (self samples) per process.

No CPU-only assumption on the measured path: on a machine with a GPU the engines take it (the
studio's config gets ``num_gpus: 1``, Ray Serve LLM a GPU bundle).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serve import ENGINE, PROMPT, free_port, make_adapter, wait_http  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDIO_CONFIG = REPO / "configs" / "serve" / "studio.yaml"
TOOLS = {"tool_call_parser": "hermes", "enable_auto_tool_choice": True}  # as studio.yaml
PYSPY_HZ = 25
BODY_EXTRA = {"ignore_eos": True}  # every request makes the same number of tokens
ENV_PREFIXES = ("OMP_", "GOMP_", "KMP_", "VLLM_CPU_", "MKL_", "CUDA_VISIBLE")


def gpu() -> bool:
    import torch

    return torch.cuda.is_available()


# ---- load ------------------------------------------------------------------------------------

async def _load(base_url: str, key: str, model: str, requests: int, concurrency: int,
                tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=300)
    sem = asyncio.Semaphore(concurrency)
    ttfts, lats, counts, failures = [], [], [], []

    async def one() -> None:
        async with sem:
            sent = time.perf_counter()
            first, count = None, 0
            try:
                stream = await client.chat.completions.create(
                    model=model, messages=PROMPT, max_tokens=tokens, temperature=0, stream=True,
                    stream_options={"include_usage": True}, extra_body=BODY_EXTRA)
                async for chunk in stream:
                    # vLLM sends the role chunk when the engine hands out the first token (the
                    # tiny model's first tokens are partial UTF-8 bytes, held back from the text).
                    if first is None and chunk.choices:
                        first = time.perf_counter() - sent
                    if chunk.usage:
                        count = chunk.usage.completion_tokens
            except openai.OpenAIError as e:
                failures.append(f"{type(e).__name__}: {str(e)[:200]}")
                return
            lats.append(time.perf_counter() - sent)
            ttfts.append(first if first is not None else lats[-1])
            counts.append(count)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(requests)))
    wall = time.perf_counter() - started
    await client.close()
    ttfts.sort()
    ms = lambda xs, q: round(xs[min(len(xs) - 1, int(len(xs) * q))] * 1000, 2) if xs else None  # noqa: E731
    return {"requests": requests, "concurrency": concurrency, "failed": len(failures),
            "failures": failures[:3], "output_tokens": sum(counts), "wall_s": round(wall, 3),
            "tokens_per_s": round(sum(counts) / wall, 1),
            "ttft_ms_p50": round(statistics.median(ttfts) * 1000, 2) if ttfts else None,
            "ttft_ms_p99": ms(ttfts, 0.99),
            "latency_ms_p50": round(statistics.median(lats) * 1000, 2) if lats else None}


def measure(url: str, key: str, model: str, requests: int, concurrency: int, tokens: int) -> dict:
    return asyncio.run(_load(url, key, model, requests, concurrency, tokens))


# ---- processes --------------------------------------------------------------------------------

def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def label(p: psutil.Process) -> str:
    try:
        cmd = p.cmdline()
        name = p.name()
    except psutil.Error:
        return "?"
    title = " ".join(cmd)[:120] if cmd else name
    for mark in ("EngineCore", "VLLM::Worker", "ServeReplica", "ServeController", "ProxyActor",
                 "api_server", "gcs_server", "raylet", "haproxy", "dashboard", "runtime_env",
                 "log_monitor", "ray::", "serve_llm_child", "default_worker", "ray start"):
        if mark in title or mark in name:
            short = title.split(" ")[0] if mark.startswith("ray::") else title
            return (short if mark == "ray::" else f"{mark}: {title}")[:140]
    return title[:140]


def cpu_snapshot(procs: list[psutil.Process]) -> dict[int, tuple[str, float]]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = (f"{label(p)} [nice {p.nice()}]", t.user + t.system)
        except psutil.Error:
            pass
    return out


def cpu_delta(before: dict, after: dict, tokens: int, wall: float) -> list[dict]:
    rows = []
    for pid, (name, cpu) in after.items():
        used = cpu - before.get(pid, (name, 0.0))[1]
        if used < 0.01:
            continue
        rows.append({"pid": pid, "process": name, "cpu_s": round(used, 2),
                     "cpu_pct": round(100 * used / wall, 1),
                     "cpu_ms_per_1k_tokens": round(1e6 * used / tokens, 1) if tokens else None})
    rows.sort(key=lambda r: -r["cpu_s"])
    return rows


def binding(p: psutil.Process) -> dict:
    """What an engine process really gets: threads, each thread's allowed CPUs, taskset, the
    OpenMP/vLLM CPU variables of its environment."""
    pid = p.pid
    info: dict = {"pid": pid, "process": label(p)}
    try:
        info["nice"] = p.nice()  # Ray starts its workers (replicas, their engines) at nice 15
        status = Path(f"/proc/{pid}/status").read_text()
        for line in status.splitlines():
            if line.startswith(("Threads:", "Cpus_allowed_list:")):
                k, v = line.split(":", 1)
                info[k] = v.strip()
        per_thread = collections.Counter()
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        per_thread[line.split(":", 1)[1].strip()] += 1
            except OSError:
                pass
        info["threads_by_cpu_list"] = dict(per_thread)
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        info["env"] = {k: v for k, _, v in (e.decode(errors="replace").partition("=") for e in env)
                       if k.startswith(ENV_PREFIXES)}
    except OSError as e:
        info["error"] = str(e)
    if shutil.which("taskset"):
        r = subprocess.run(["taskset", "-pc", str(pid)], capture_output=True, text=True)
        info["taskset"] = (r.stdout or r.stderr).strip()
    return info


def engine_procs(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        name = label(p)
        if any(m in name for m in ("EngineCore", "VLLM::Worker", "ModelDeployment", "LLMServer",
                                   "api_server", "ApiIngress")):
            out.append(p)
    return out


def stop_and_check(pids: set[int], stop, wait_s: float = 60) -> dict:
    """Stop a server and wait for every process it had to be gone; which were still there."""
    t0 = time.perf_counter()
    stop()
    deadline = time.monotonic() + wait_s
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if psutil.pid_exists(pid)
                 and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
        time.sleep(0.5)
    left = []
    for pid in alive:  # ours, past the wait: say so, then kill them
        try:
            p = psutil.Process(pid)
            left.append(label(p))
            p.kill()
        except psutil.Error:
            pass
    return {"processes": len(pids), "left_after_stop": left,
            "stop_s": round(time.perf_counter() - t0, 1)}


# ---- servers ------------------------------------------------------------------------------------

class Server:
    name = ""
    root_pid = 0
    url = ""
    key = "none"
    points: dict[str, tuple[str, str]] = {}  # point → (url suffix or "", model)

    def pids(self) -> set[int]:
        return {p.pid for p in tree(self.root_pid)}

    def procs(self) -> list[psutil.Process]:
        return tree(self.root_pid)


def pin_engine_core(root_pid: int, cpu: int) -> None:
    """Bind every thread of the EngineCore process under ``root_pid`` to ``cpu`` (what vLLM's
    ``auto`` binding does to the process that runs the model: the studio's EngineCore, an ``mp``
    worker), since vLLM binds only the workers its ``mp`` executor spawns."""
    from deployments.engines.cpu_isolation import is_engine

    cores = [p for p in tree(root_pid) if is_engine(p)]
    assert cores, "no EngineCore process under the raw vLLM server"
    for core in cores:
        for t in core.threads():
            os.sched_setaffinity(t.id, {cpu})


class RawVLLM(Server):
    name = "raw_vllm"

    def __init__(self, model_dir: Path, adapter: Path, log_dir: Path, nice: int = 0, executor: str = "mp"):
        self.model_dir, self.adapter, self.log_dir, self.nice = model_dir, adapter, log_dir, nice
        self.executor = executor

    def start(self) -> None:
        port = free_port()
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model",
               str(self.model_dir), "--served-model-name", "tiny", "--dtype", ENGINE["dtype"],
               "--max-model-len", str(ENGINE["max_model_len"]), "--enable-lora",
               "--max-loras", str(ENGINE["max_loras"]), "--max-cpu-loras", str(ENGINE["max_loras"]),
               "--max-lora-rank", str(ENGINE["max_lora_rank"]),
               "--max-num-seqs", str(ENGINE["max_num_seqs"]), "--enforce-eager",
               "--seed", str(ENGINE["seed"]), "--stream-interval", str(ENGINE["stream_interval"]),
               "--enable-auto-tool-choice", "--tool-call-parser", TOOLS["tool_call_parser"],
               "--host", "127.0.0.1", "--port", str(port)]
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        if not gpu():
            env["VLLM_CPU_KVCACHE_SPACE"] = str(ENGINE["kv_cache_space_gib"])
        uni = self.executor == "uni" and not gpu()
        if uni:  # the studio's engine layout (deployments/engines/vllm_engine.py `_start_client`)
            cmd += ["--distributed-executor-backend", "uni"]
            env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1")
        log = open(self.log_dir / f"raw-vllm-{port}.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True,
                                     preexec_fn=(lambda: os.nice(self.nice)) if self.nice else None)
        self.root_pid = self.proc.pid
        self.url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"http://127.0.0.1:{port}/health")
        if uni:
            pin_engine_core(self.root_pid, cpu=0)
        httpx.post(f"{self.url}/load_lora_adapter", json={"lora_name": "adapter",
                   "lora_path": str(self.adapter)}, timeout=120).raise_for_status()
        self.points = {"c1": ("", "tiny"), "c8": ("", "tiny"), "c32": ("", "tiny"),
                       "lora_c8": ("", "adapter")}

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


class RayServeLLM(Server):
    name = "ray_serve_llm"

    def __init__(self, model_dir: Path, log_dir: Path):
        self.model_dir, self.log_dir = model_dir, log_dir

    def start(self) -> None:
        port = free_port()
        log = open(self.log_dir / f"ray-serve-llm-{port}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-llm-child", str(port),
             str(self.model_dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(REPO))
        self.root_pid = self.proc.pid
        self.url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 400
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Ray Serve LLM exited: see {log.name}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray Serve LLM not up in 400 s: see {log.name}")
            time.sleep(1)
        self.points = {"c1": ("", "tiny"), "c8": ("", "tiny"), "c32": ("", "tiny")}

    def pids(self) -> set[int]:
        # Ray's processes started by the child (GCS, raylet, workers) are its descendants.
        return super().pids()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # the child shuts Serve and its Ray down
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def serve_llm_child(port: int, model_dir: str) -> None:
    """Ray Serve LLM on a Ray of its own, until SIGTERM."""
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    from studio.settings import StudioSettings
    from studio.stack import serve_env

    os.environ.update(serve_env(StudioSettings(serve_fast_path=True)))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ray.init(address="local", num_cpus=8, include_dashboard=False, logging_level="ERROR")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        engine_kwargs = {k: ENGINE[k] for k in ("dtype", "max_model_len", "max_num_seqs",
                                                "enforce_eager", "seed", "stream_interval")}
        engine_kwargs.update(enable_lora=True, max_loras=ENGINE["max_loras"],
                             max_cpu_loras=ENGINE["max_loras"], max_lora_rank=ENGINE["max_lora_rank"],
                             **TOOLS)
        on_gpu = gpu()
        if not on_gpu:
            engine_kwargs["distributed_executor_backend"] = "mp"
        config = LLMConfig(
            model_loading_config={"model_id": "tiny", "model_source": model_dir},
            engine_kwargs=engine_kwargs,
            placement_group_config={"bundles": [{"GPU": 1} if on_gpu else {"CPU": 1}]},
            runtime_env={"env_vars": {} if on_gpu else
                         {"VLLM_CPU_KVCACHE_SPACE": str(ENGINE["kv_cache_space_gib"])}},
            deployment_config={"num_replicas": 1})
        serve.run(build_openai_app({"llm_configs": [config]}), name="llm", route_prefix="/",
                  blocking=False)
        print("engine_kwargs", json.dumps(engine_kwargs), flush=True)
        while True:
            time.sleep(1)
    finally:
        ray.shutdown()  # its Serve replicas and engines with it


class Studio(Server):
    name = "studio"

    def __init__(self, home: Path, model_dir: Path, adapter: Path, log_dir: Path, pin_others: bool = False,
                 engine_nice: int | None = None, isolate_engine: bool = False):
        self.home, self.model_dir, self.adapter, self.log_dir = home, model_dir, adapter, log_dir
        self.pin_others, self.engine_nice = pin_others, engine_nice
        self.key = secrets.token_urlsafe(32)
        self.version: str | None = None
        cfg = yaml.safe_load(STUDIO_CONFIG.read_text())
        model = cfg["applications"][0]["args"]["models"][0]
        model["engine"]["model"] = str(model_dir)
        if gpu():
            model["num_gpus"] = 1
        self.config = log_dir / "studio-bench.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("STUDIO_", "RAY_ADDRESS"))},
                    "STUDIO_HOME": str(home), "STUDIO_HTTP_PORT": str(self.port),
                    "STUDIO_RAY_PORT": str(free_port()), "STUDIO_DASHBOARD_PORT": str(free_port()),
                    "STUDIO_MLFLOW_UI": "0", "STUDIO_ADMIN_KEY": self.key}
        if isolate_engine:  # the studio's own setting (deployments/engines/cpu_isolation.py)
            self.env["STUDIO_SERVE_ISOLATE_ENGINE"] = "1"

    def cli(self, *args: str) -> None:
        r = subprocess.run([str(Path(sys.executable).with_name("studio")), *args], env=self.env,
                           capture_output=True, text=True, cwd=str(REPO))
        if r.returncode:
            raise RuntimeError(f"studio {' '.join(args)}: {r.stdout[-2000:]}{r.stderr[-2000:]}")

    def start(self) -> None:
        self.env["STUDIO_DASHBOARD_PORT"] = str(free_port())
        self.cli("up", "--config", str(self.config))
        self.root_pid = json.loads((self.home / "ray-head.json").read_text())["pid"]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        from deployments.engines.cpu_isolation import is_engine, keep_off_engine_cores, stack_processes

        if self.pin_others:  # what STUDIO_SERVE_ISOLATE_ENGINE does on the replica, done from outside
            assert keep_off_engine_cores(str(self.home)) is not None, "no engine, or it holds every core"
        if self.engine_nice is not None:  # needs CAP_SYS_NICE to go below Ray's 15
            for p in stack_processes(str(self.home)):
                if is_engine(p):
                    p.nice(self.engine_nice)
        if self.version is None:
            self.version = self.register()
        self.points = {"c1": ("", "tiny"), "c8": ("", "tiny"), "c32": ("", "tiny"),
                       "lora_c8": ("", self.version), "gateway_c8": ("gateway", "tiny")}

    def register(self) -> str:
        os.environ["STUDIO_HOME"] = str(self.home)
        from studio.registry.versions import register_version
        from studio.settings import StudioSettings
        from studio.store.db import session_scope

        with session_scope(StudioSettings(home=self.home).db_url) as s:
            mv = register_version(s, name="bench-adapter", base_model=str(self.model_dir),
                                  method="sft", adapter_type="lora", uri=str(self.adapter))
            ref = f"{mv.name}@{mv.version}"
        time.sleep(1.5)  # past the Router's registry TTL
        return ref

    def point_url(self, where: str) -> str:
        return f"http://127.0.0.1:{self.port}/gateway/v1" if where == "gateway" else self.url

    def stop(self) -> None:
        self.cli("down")


def point_url(server: Server, where: str) -> str:
    return server.point_url(where) if isinstance(server, Studio) else server.url


# ---- the run ------------------------------------------------------------------------------------

def run_server(server: Server, args, warm: bool = True) -> dict:
    t0 = time.perf_counter()
    server.start()
    out: dict = {"ready_s": round(time.perf_counter() - t0, 1), "points": {}}
    for point, (where, model) in server.points.items():  # warm-up: each path once
        measure(point_url(server, where), server.key, model, 16, 8, args.tokens)
    pids = server.pids()
    out["engine_processes"] = [binding(p) for p in engine_procs(server.procs())]
    for point, (where, model) in server.points.items():
        conc = {"c1": 1, "c32": 32}.get(point, 8)
        n = {"c1": args.c1_requests, "c32": args.c32_requests, "lora_c8": args.side_requests,
             "gateway_c8": args.side_requests}.get(point, args.requests)
        procs = server.procs()
        load_before = [round(x, 2) for x in os.getloadavg()]
        before = cpu_snapshot(procs)
        r = measure(point_url(server, where), server.key, model, n, conc, args.tokens)
        r["loadavg_before"] = load_before
        if point == "c8":
            r["cpu_by_process"] = cpu_delta(before, cpu_snapshot(procs), r["output_tokens"],
                                            r["wall_s"])
            r["cpu_ms_per_1k_tokens_all"] = round(sum(x["cpu_ms_per_1k_tokens"] or 0
                                                      for x in r["cpu_by_process"]), 1)
        out["points"][point] = r
        print(f"  {server.name} {point}: {r['tokens_per_s']} tok/s, ttft p50 {r['ttft_ms_p50']} "
              f"p99 {r['ttft_ms_p99']} ms, latency p50 {r['latency_ms_p50']} ms, load {load_before[0]}, failed {r['failed']}", flush=True)
    out["stop"] = stop_and_check(pids, server.stop, wait_s=30)
    print(f"  {server.name} stopped: {out['stop']}", flush=True)
    return out


def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None


def ratios(rounds: list[dict]) -> dict:
    def pair(a, pa, b, pb, key, how):
        vals = []
        for r in rounds:
            try:
                x, y = r[a]["points"][pa][key], r[b]["points"][pb][key]
            except KeyError:
                continue
            if x is None or y is None:
                continue
            vals.append(x / y if how == "ratio" else x - y)
        return med(vals)

    out = {}
    for side in ("studio", "ray_serve_llm"):
        for anchor in ("raw_vllm", "ray_serve_llm"):
            if side == anchor:
                continue
            p = f"{side}_vs_{anchor}"
            out[f"{p}_c8_throughput"] = pair(side, "c8", anchor, "c8", "tokens_per_s", "ratio")
            out[f"{p}_c8_added_ttft_ms_p50"] = pair(side, "c8", anchor, "c8", "ttft_ms_p50", "diff")
            out[f"{p}_c8_ttft_p99_ratio"] = pair(side, "c8", anchor, "c8", "ttft_ms_p99", "ratio")
            out[f"{p}_c1_added_ttft_ms_p50"] = pair(side, "c1", anchor, "c1", "ttft_ms_p50", "diff")
            out[f"{p}_c1_added_latency_ms_p50"] = pair(side, "c1", anchor, "c1", "latency_ms_p50", "diff")
            out[f"{p}_c1_throughput"] = pair(side, "c1", anchor, "c1", "tokens_per_s", "ratio")
            out[f"{p}_c32_throughput"] = pair(side, "c32", anchor, "c32", "tokens_per_s", "ratio")
    out["studio_vs_raw_vllm_lora_c8_throughput"] = pair("studio", "lora_c8", "raw_vllm", "lora_c8",
                                                        "tokens_per_s", "ratio")
    out["studio_gateway_vs_v1_c8_throughput"] = pair("studio", "gateway_c8", "studio", "c8",
                                                     "tokens_per_s", "ratio")
    out["studio_gateway_vs_raw_vllm_c8_throughput"] = pair("studio", "gateway_c8", "raw_vllm", "c8",
                                                           "tokens_per_s", "ratio")
    return {k: v for k, v in out.items() if v is not None}


GOALS = {"studio_vs_raw_vllm_c8_throughput": (">=", 0.95),
         "studio_vs_raw_vllm_c8_added_ttft_ms_p50": ("<=", 10),
         "studio_vs_raw_vllm_c8_ttft_p99_ratio": ("<=", 1.5),
         "studio_vs_raw_vllm_c1_added_latency_ms_p50": ("<=", 5),
         "studio_vs_raw_vllm_c32_throughput": (">=", 0.95),
         "studio_vs_raw_vllm_lora_c8_throughput": (">=", 0.90),
         "studio_gateway_vs_v1_c8_throughput": (">=", 0.95),
         "studio_vs_ray_serve_llm_c8_throughput": (">=", 1.0),
         "studio_vs_ray_serve_llm_c32_throughput": (">=", 1.0),
         "studio_vs_ray_serve_llm_c1_added_latency_ms_p50": ("<=", 0),
         "studio_vs_ray_serve_llm_c8_added_ttft_ms_p50": ("<=", 0)}


def goals(r: dict) -> dict:
    out = {}
    for k, (op, bound) in GOALS.items():
        v = r.get(k)
        out[k] = {"goal": f"{op} {bound}", "value": v,
                  "met": None if v is None else (v >= bound if op == ">=" else v <= bound)}
    return out


def machine() -> dict:
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": gpu(),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def bench(args) -> None:
    from studio.models.tiny import make_tiny

    order_names = [s for s in ("raw_vllm", "ray_serve_llm", "studio") if s not in args.skip]
    with tempfile.TemporaryDirectory(prefix="bench-alone-") as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        model_dir = make_tiny(home / "models" / "tiny")
        adapter = make_adapter(model_dir, tmp / "adapter", seed=0)
        servers = {"raw_vllm": RawVLLM(model_dir, adapter, tmp, args.raw_nice, args.raw_executor),
                   "ray_serve_llm": RayServeLLM(model_dir, tmp),
                   "studio": Studio(home, model_dir, adapter, tmp, args.studio_pin_others, args.studio_engine_nice,
                                     args.studio_isolate_engine)}
        started = time.perf_counter()
        result = {"benchmark": "serve-alone", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine_before": machine(), "model": "tiny (studio.models.tiny), float32",
                  "engine": {**ENGINE, **TOOLS}, "serve_fast_path": True,
                  "workload": {"stream": True, "max_tokens": args.tokens, "ignore_eos": True,
                               "extra_body": BODY_EXTRA, "raw_vllm_nice": args.raw_nice,
                               "raw_vllm_executor": args.raw_executor,
                               "studio_pin_others": args.studio_pin_others,
                               "studio_engine_nice": args.studio_engine_nice,
                               "studio_isolate_engine": args.studio_isolate_engine,
                               "ray_worker_niceness": os.environ.get("RAY_worker_niceness", "15 (Ray's default)"),
                               "requests": {"c1": args.c1_requests, "c8": args.requests,
                                            "c32": args.c32_requests,
                                            "lora_c8": args.side_requests,
                                            "gateway_c8": args.side_requests},
                               "warmup_requests_per_point": 16},
                  "rounds": []}
        for i in range(args.rounds):
            order = order_names[i % len(order_names):] + order_names[:i % len(order_names)]
            rnd: dict = {"order": order}
            for name in order:
                print(f"round {i + 1}/{args.rounds}: {name}", flush=True)
                try:
                    rnd[name] = run_server(servers[name], args)
                except Exception as e:  # noqa: BLE001 — record why a server is missing, go on
                    rnd[name] = {"error": f"{type(e).__name__}: {str(e)[:1500]}"}
                    print(f"  {name} failed: {rnd[name]['error']}", flush=True)
                    try:
                        servers[name].stop()
                    except Exception:  # noqa: BLE001
                        pass
            result["rounds"].append(rnd)
        result["machine_after"] = machine()
        result["wall_s"] = round(time.perf_counter() - started, 1)
    result["ratios"] = ratios(result["rounds"])
    result["goals"] = goals(result["ratios"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["goals"], indent=2))
    print(f"written to {args.out}")


# ---- profile --------------------------------------------------------------------------------------

def top_frames(raw: Path, n: int = 12) -> dict:
    """py-spy's raw (collapsed) output → samples, and the top frames by self and by inclusive
    samples."""
    selfc, incl, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        try:
            c = int(count)
        except ValueError:
            continue
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += c
        selfc[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
    pct = lambda c: round(100 * c / total, 1) if total else 0  # noqa: E731
    return {"samples": total,
            "top_self": [{"frame": f[:160], "pct": pct(c)} for f, c in selfc.most_common(n)],
            "top_inclusive": [{"frame": f[:160], "pct": pct(c)} for f, c in incl.most_common(n)]}


def profile_server(server: Server, args, out_dir: Path) -> dict:
    server.start()
    where, model = server.points["c8"]
    url = point_url(server, where)
    measure(url, server.key, model, 16, 8, args.tokens)
    pids = server.pids()
    procs = server.procs()
    pyspy = str(Path(sys.executable).with_name("py-spy"))
    spies = []
    for p in procs:
        try:
            exe = p.exe()
        except psutil.Error:
            continue
        if "python" not in Path(exe).name:
            continue
        f = out_dir / f"{server.name}-{p.pid}.txt"
        spies.append((p, f, subprocess.Popen(
            [pyspy, "record", "--pid", str(p.pid), "--duration", str(args.profile_s), "--rate",
             str(PYSPY_HZ), "--format", "raw", "--nonblocking", "--output", str(f)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    time.sleep(1.5)
    load_before = [round(x, 2) for x in os.getloadavg()]
    before = cpu_snapshot(procs)
    # Enough requests to cover the recording; measured as usual.
    r = measure(url, server.key, model, args.profile_requests, 8, args.tokens)
    after = cpu_snapshot(procs)
    for _, _, spy in spies:
        spy.wait(timeout=args.profile_s + 60)
    r["loadavg_before"] = load_before
    result = {"load": r, "cpu_by_process": cpu_delta(before, after, r["output_tokens"], r["wall_s"]),
              "engine_processes": [binding(p) for p in engine_procs(procs)], "py_spy": []}
    for p, f, _ in spies:
        if f.exists():
            result["py_spy"].append({"pid": p.pid, "process": label(p), **top_frames(f)})
    result["py_spy"].sort(key=lambda x: -x["samples"])
    result["stop"] = stop_and_check(pids, server.stop)
    return result


def profile(args) -> None:
    from studio.models.tiny import make_tiny

    with tempfile.TemporaryDirectory(prefix="bench-alone-prof-") as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        model_dir = make_tiny(home / "models" / "tiny")
        adapter = make_adapter(model_dir, tmp / "adapter", seed=0)
        result = {"benchmark": "serve-profile", "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine_before": machine(),
                  "workload": {"concurrency": 8, "max_tokens": args.tokens,
                               "requests": args.profile_requests, "py_spy_rate_hz": PYSPY_HZ,
                               "py_spy_duration_s": args.profile_s},
                  "note": "py-spy samples only when a thread is on CPU (idle frames dropped): a "
                          "process's samples / (rate x duration) ~ its CPU share; pct = share of "
                          "that process's samples. All spies run at once (they take CPU too)."}
        for name, server in (("studio", Studio(home, model_dir, adapter, tmp)),
                             ("raw_vllm", RawVLLM(model_dir, adapter, tmp, args.raw_nice, args.raw_executor))):
            if name in args.skip:
                continue
            print(f"profiling {name}", flush=True)
            result[name] = profile_server(server, args, tmp)
        result["machine_after"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request")
    parser.add_argument("--requests", type=int, default=128, help="requests of the 8-client point")
    parser.add_argument("--c1-requests", type=int, default=16)
    parser.add_argument("--c32-requests", type=int, default=128)
    parser.add_argument("--side-requests", type=int, default=64,
                        help="requests of the 8-client adapter and gateway points")
    parser.add_argument("--raw-nice", type=int, default=0,
                        help="niceness of the raw vLLM server (Ray starts its workers at 15)")
    parser.add_argument("--raw-executor", choices=["mp", "uni"], default="mp",
                        help="raw vLLM's executor on CPU: vLLM's default (mp: a worker process beside the "
                             "EngineCore) or the studio's (uni: the model in the EngineCore, one thread, bound)")
    parser.add_argument("--studio-pin-others", action="store_true",
                        help="experiment: once the studio is up, move every process of it but the EngineCore "
                             "off the EngineCore's core from outside (what --studio-isolate-engine has the "
                             "studio do itself)")
    parser.add_argument("--studio-isolate-engine", action="store_true",
                        help="start the studio with STUDIO_SERVE_ISOLATE_ENGINE=1 (its stack kept off the engine's core)")
    parser.add_argument("--studio-engine-nice", type=int, default=None,
                        help="experiment: once the studio is up, set its EngineCore's niceness (Ray starts it at 15)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["raw_vllm", "ray_serve_llm", "studio"])
    parser.add_argument("--profile", action="store_true", help="py-spy every process under 8 clients")
    parser.add_argument("--profile-s", type=int, default=20)
    parser.add_argument("--profile-requests", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--serve-llm-child", nargs=2, metavar=("PORT", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_llm_child:
        serve_llm_child(int(args.serve_llm_child[0]), args.serve_llm_child[1])
        return
    if args.out is None:
        args.out = REPO / "docs" / "bench" / ("serve-profile.json" if args.profile else "serve-alone.json")
    (profile if args.profile else bench)(args)


if __name__ == "__main__":
    main()
