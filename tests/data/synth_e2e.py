"""Synthetic generation end to end on a live studio (used by tests/gateway/test_gateway_e2e.py, which
owns the one stack serving the tiny model): Markdown and PDF documents are ingested with the CLI,
`studio data generate --local --follow` runs through the gateway to the tiny model (guided JSON),
progress is read live over `GET /api/synth/{id}` and SSE while it runs, and the result is a new
version with lineage to the documents and the generator. Content quality from a random tiny model
is low; what is checked is the path, the progress and the lineage."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from tests.data.docs import MARKDOWN, text_pdf

RIVERS = """# Rivers

Rivers carry water from the mountains to the sea. Where a river meets the sea it slows down and
drops its sand, building a delta. Floods spread fresh soil over the plains next to a river.
"""


def check_synth_on_the_tiny_model(stack: dict, tmp_path: Path, studio_cli: str, repo: Path) -> None:
    env, base = {**stack["env"], "COLUMNS": "200"}, stack["base"]
    auth = {"Authorization": f"Bearer {stack['admin']}"}
    home = Path(env["STUDIO_HOME"])
    docs = tmp_path / "manuals"
    docs.mkdir()
    (docs / "tides.md").write_text(MARKDOWN)
    (docs / "rivers.md").write_text(RIVERS)
    (docs / "glaciers.pdf").write_bytes(text_pdf(["Glaciers are rivers of ice.",
                                                  "They carve deep valleys as they flow."]))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([studio_cli, *args], env=env, capture_output=True, text=True,
                              timeout=300, cwd=repo)

    r = cli("data", "ingest", str(docs), "--name", "manuals")
    assert r.returncode == 0 and "3 rows kept" in r.stdout, r.stdout + r.stderr
    recipe = tmp_path / "synth-qa.yaml"
    recipe.write_text(yaml.safe_dump({
        "source": "manuals", "name": "manuals-qa", "mode": "qa", "model": "tiny",
        "tokenizer": str(home / "models" / "tiny"), "chunk_tokens": 48, "overlap_tokens": 8,
        "pairs_per_chunk": 1, "max_tokens": 160, "max_field_chars": 24, "max_concurrency": 4,
        "chunk_retries": 1}))
    proc = subprocess.Popen([studio_cli, "data", "generate", "--recipe", str(recipe), "--local",
                             "--follow"], env=env, cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        job_id = None
        while job_id is None and time.monotonic() < deadline and proc.poll() is None:
            jobs = httpx.get(f"{base}/api/jobs", headers=auth).json()
            jobs = jobs.get("jobs", jobs) if isinstance(jobs, dict) else jobs
            job_id = next((j["id"] for j in jobs if j.get("kind") == "synth"), None)
            time.sleep(0.2)
        assert job_id is not None, proc.communicate(timeout=60)[0]
        polled = [httpx.get(f"{base}/api/synth/{job_id}", headers=auth).json()]
        events = []
        with httpx.stream("GET", f"{base}/api/synth/{job_id}/events", headers=auth,
                          timeout=httpx.Timeout(10, read=300)) as sse:
            for line in sse.iter_lines():
                if line.startswith("data: "):  # progress events, then the end event
                    events.append(json.loads(line[6:]))
        out = proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    final = events[-1]
    assert proc.returncode == 0 and final["status"] == "SUCCEEDED", out + json.dumps(final)[:3000]
    total = final["progress"]["chunks_total"]
    assert total >= 3 and final["progress"]["chunks_done"] == total
    assert final["progress"]["tokens"] > 0
    # Live progress: the job was seen before it ended, and the stream carried more than the end.
    assert polled[0]["status"] in ("STARTING", "RUNNING", "CHECKPOINTING", "SUCCEEDED")
    assert len(events) >= 2 or polled[0]["progress"]["chunks_done"] < total
    assert f"{total}/{total}" in out and "manuals-qa@1 snapshot" in out, out
    result = final["result"]
    assert result["rows"] >= 1 and result["deployments"] == ["tiny"]
    stats = httpx.get(f"{base}/api/datasets/manuals-qa/stats", headers=auth).json()
    source = httpx.get(f"{base}/api/datasets/manuals", headers=auth).json()["versions"][-1]
    lineage = stats["lineage"]
    assert (lineage["transform"], lineage["parent_id"]) == ("synth", source["snapshot_id"])
    assert lineage["params"]["model"] == "tiny" and lineage["params"]["mode"] == "qa"
    assert stats["kind"] == "prompt_completion" and stats["rows"] == result["rows"]
    rows = httpx.get(f"{base}/api/synth/{job_id}/rows", headers=auth).json()
    assert rows["total"] >= result["rows"]
