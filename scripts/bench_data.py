"""Data benchmark → bench-results/data.json.

1. Ingest throughput: `studio.data.ingest` on an N-row JSONL (default 1M) vs a plain pandas
   `read_json(lines=True)` + `to_parquet` of the same file, in the same run (ratio reported).
2. Peak RSS as input grows: each ingest runs in a fresh subprocess on 1/4, 1/2 and all of the rows;
   streamed ingest keeps the peak nearly flat while pandas grows with the input.
3. Synthetic generation, batched (max_concurrency=8) vs sequential (1), through the studio
   gateway (GatewayService in process: LiteLLM router, limits, usage) to a loopback
   OpenAI-compatible server that answers after a fixed delay (a provider's latency stand-in).

    .venv/bin/python scripts/bench_data.py [--rows 1000000] [--out bench-results/data.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def write_jsonl(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"reverse: {' '.join(str(i))}", "completion": " ".join(str(i)[::-1])}))
            f.write("\n")


CHILD = r"""
import json, resource, sys, time
mode, src, home = sys.argv[1:4]
t = time.perf_counter()
if mode == "studio":
    from studio.settings import StudioSettings
    from studio.store.db import init_db
    from studio.data.ingest import ingest_path
    s = StudioSettings(home=home, database_url=f"sqlite:///{home}/db.sqlite", data_roots="/")
    init_db(s.db_url)
    t = time.perf_counter()
    r = ingest_path(src, "bench", s, use_ray=False)
    rows = r.row_count
else:
    import pandas as pd
    t = time.perf_counter()
    df = pd.read_json(src, lines=True)
    df.to_parquet(f"{home}/out.parquet")
    rows = len(df)
print(json.dumps({"rows": rows, "seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_child(mode: str, src: Path, tmp: Path) -> dict:
    home = Path(tempfile.mkdtemp(dir=tmp))
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), str(home)], check=True,
                         capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


class _GatewayInProcess:
    """The studio gateway (``GatewayService``: LiteLLM router, limits, usage rows) called in this
    process, with the ``achat`` of ``studio.gateway.Client`` — what the synth job talks to."""

    def __init__(self, svc, job_id: str, concurrency: int):
        self.svc = svc
        self.ctx = {"key_id": 1, "key_name": "bench", "service": "synth", "job_id": job_id,
                    "job_concurrency": concurrency}

    async def achat(self, model: str, messages: list, **params) -> dict:
        from studio.gateway import GatewayError

        status, body, _ = await self.svc.handle("chat", {"model": model, "messages": messages, **params},
                                                self.ctx)
        if status != 200:
            raise GatewayError(f"gateway answered {status}: {body}", status=status)
        return body


def bench_synth(tmp: Path, chunks: int = 32, delay_s: float = 0.05) -> dict:
    sys.path.insert(0, str(ROOT))
    import studio.gateway  # noqa: F401 — LiteLLM's local cost map before litellm loads
    from studio.data.ingest import ingest_path
    from studio.data.synth.run import run_local
    from studio.data.synth.spec import SynthSpec
    from studio.gateway.service import GatewayService
    from studio.gateway.spec import load_gateway_spec
    from studio.settings import StudioSettings
    from studio.store.db import init_db
    from tests.data.fake_generator import FakeGenerator

    gen = FakeGenerator()
    gen.delay_s = delay_s
    gen.start()
    try:
        home = Path(tempfile.mkdtemp(dir=tmp))
        s = StudioSettings(home=home, database_url=f"sqlite:///{home}/db.sqlite")
        init_db(s.db_url)
        gw = GatewayService(load_gateway_spec({
            "groups": [{"name": "gen", "provider": "hosted_vllm", "model": "gen", "api_base": gen.base}],
            "router": {"num_retries": 0}, "cache": {"namespace": f"bench-{os.getpid()}"}}), None, s.db_url)
        import asyncio

        # One call first, so LiteLLM's first-call setup is not charged to the sequential run.
        asyncio.run(_GatewayInProcess(gw, "warm-up", 1).achat("gen", [{"role": "user", "content": "hi"}]))
        out = {}
        for label, conc in (("sequential", 1), ("batched", 8)):
            docs = home / f"docs-{label}"  # different text per run: no cache can answer the second
            docs.mkdir()
            (docs / "d.md").write_text(" ".join(f"{label}{i}" for i in range(chunks * 64)))
            ingest_path(str(docs), f"docs-{label}", s)
            spec = SynthSpec(source=f"docs-{label}", name=f"qa-{label}", model="gen", chunk_tokens=64,
                             overlap_tokens=0, max_concurrency=conc)
            t = time.perf_counter()
            r = run_local(spec, s, f"bench-{label}", _GatewayInProcess(gw, f"bench-{label}", conc))
            secs = time.perf_counter() - t
            out[label] = {"chunks": r["chunks_total"], "rows": r["rows"], "seconds": round(secs, 3),
                          "rows_per_s": round(r["rows"] / secs, 1)}
        gw.close()
        out["speedup_batched_vs_sequential"] = round(out["batched"]["rows_per_s"] / out["sequential"]["rows_per_s"], 2)
        out["path"] = ("studio.data.synth.run → GatewayService (LiteLLM router, limits, usage rows; "
                       "in process, no HTTP hop) → hosted_vllm group → loopback OpenAI-compatible server "
                       f"answering after {delay_s * 1000:.0f} ms")
        return out
    finally:
        gen.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000, help="Rows of the JSONL (RSS runs use 1/4, 1/2, all).")
    ap.add_argument("--synth-chunks", type=int, default=32, help="Chunks per synthesis run.")
    ap.add_argument("--out", default=str(ROOT / "bench-results" / "data.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    result: dict = {"rows": args.rows, "cpu_count": os.cpu_count()}
    sizes = [args.rows // 4, args.rows // 2, args.rows]
    files = {}
    for n in sizes:
        files[n] = tmp / f"rows-{n}.jsonl"
        write_jsonl(files[n], n)
    full = files[args.rows]
    result["input_mib"] = round(full.stat().st_size / 2**20, 1)
    studio = run_child("studio", full, tmp)
    pandas = run_child("pandas", full, tmp)
    result["ingest"] = {
        "studio_rows_per_s": round(studio["rows"] / studio["seconds"]),
        "pandas_rows_per_s": round(pandas["rows"] / pandas["seconds"]),
        "ratio_studio_vs_pandas": round((studio["rows"] / studio["seconds"]) / (pandas["rows"] / pandas["seconds"]), 3),
        "note": "studio validates and normalizes every row, hashes it for the content id and records "
                "rejects; pandas only parses and writes",
    }
    rss = {"rows": sizes, "studio_peak_rss_mib": [], "pandas_peak_rss_mib": []}
    for n in sizes:
        rss["studio_peak_rss_mib"].append(round(run_child("studio", files[n], tmp)["peak_rss_mib"], 1))
        rss["pandas_peak_rss_mib"].append(round(run_child("pandas", files[n], tmp)["peak_rss_mib"], 1))
    rss["studio_growth_full_vs_quarter"] = round(rss["studio_peak_rss_mib"][-1] / rss["studio_peak_rss_mib"][0], 2)
    rss["pandas_growth_full_vs_quarter"] = round(rss["pandas_peak_rss_mib"][-1] / rss["pandas_peak_rss_mib"][0], 2)
    result["peak_rss"] = rss
    result["synth"] = bench_synth(tmp, chunks=args.synth_chunks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
