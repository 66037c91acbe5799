"""scripts/gpu_check.sh on a machine without a GPU: its arguments, its plan, its refusal (issue 24 item 7).
The check itself needs one CUDA GPU; here only what it would do and how it says no are tested."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
STEPS = ["sft_lora", "qlora", "grpo_vllm", "serve", "zero2"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60, cwd="/")


def has_gpu() -> bool:
    smi = shutil.which("nvidia-smi")
    return bool(smi) and "GPU " in subprocess.run([smi, "-L"], capture_output=True, text=True).stdout


def test_help_names_every_step_and_option():
    r = run("--help")
    assert r.returncode == 0
    for word in [*STEPS, "prepare", "--out", "--only", "--dry-run", "--work", "make setup GPU=1"]:
        assert word in r.stdout


def test_dry_run_plans_every_step_with_the_studio_cli(tmp_path):
    r = run("--dry-run", "--work", str(tmp_path), "--out", str(tmp_path / "r.json"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    heads = [line.split("]")[0].lstrip("[") for line in out.splitlines() if line.startswith("[")]
    assert heads == ["prepare", *STEPS, "finally"]
    assert "studio models make-tiny --out " + str(tmp_path / "home/models/tiny") in out
    assert "hidden_size=1024" in out and "studio up --config configs/serve/studio_api.yaml" in out
    for recipe in ["sft_reverse_tiny.yaml", "sft_qwen05b_qlora_gpu.yaml", "grpo_reverse_tiny.yaml",
                   "sft_qwen05b_deepspeed_gpu.yaml"]:
        assert f"studio train submit configs/train/{recipe}" in out
        assert (ROOT / "configs/train" / recipe).is_file()
    assert "grpo.rollout.engine=vllm" in out and "hyper.bf16=true" in out
    assert "deployment.engine.engine=vllm" in out and "deployment.engine.engine=sglang" in out
    assert "gpu_check_compare.py" in out and str(tmp_path / "r.json") in out
    assert not (tmp_path / "home").exists()  # a plan only: nothing built


def test_only_selects_steps_in_their_order(tmp_path):
    r = run("--dry-run", "--work", str(tmp_path), "--only", "zero2,qlora")
    assert r.returncode == 0, r.stderr
    heads = [line.split("]")[0].lstrip("[") for line in r.stdout.splitlines() if line.startswith("[")]
    assert heads == ["prepare", "qlora", "zero2", "finally"]


@pytest.mark.parametrize("args, says", [
    (["--only", "sft"], "unknown step 'sft' in --only; choose from: sft_lora qlora grpo_vllm serve zero2"),
    (["--only", "qlora,prepare"], "unknown step 'prepare'"),
    (["--only"], "--only needs a comma-separated list of steps"),
    (["--step-timeout", "soon"], "--step-timeout needs a whole number of seconds"),
    (["--bogus"], "unknown argument '--bogus' (see --help)"),
])
def test_bad_arguments_exit_2_naming_the_problem(args, says):
    r = run("--dry-run", *args)
    assert r.returncode == 2
    assert says in r.stderr and r.stdout == ""


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU: the script would run the check")
def test_without_a_gpu_it_refuses_with_exit_2(tmp_path):
    r = run("--work", str(tmp_path / "w"))
    assert r.returncode == 2
    assert "no NVIDIA GPU here" in r.stderr and "--dry-run" in r.stderr
    assert not (tmp_path / "w").exists()
    # Without --work neither: no scratch folder is made before the refusal.
    before = set(Path("/tmp").glob("gpu-check.*"))
    assert run().returncode == 2
    assert set(Path("/tmp").glob("gpu-check.*")) == before


def test_compare_needs_two_models(tmp_path):
    key = tmp_path / "key"
    key.write_text("k")
    r = subprocess.run([str(ROOT / ".venv/bin/python"), str(ROOT / "scripts/gpu_check_compare.py"),
                        "--base-url", "http://127.0.0.1:9", "--key-file", str(key), "--models", "one",
                        "--out", str(tmp_path / "o.json")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--models needs exactly two names" in r.stderr


def test_every_planned_recipe_and_override_is_valid(tmp_path):
    """The plan's `train submit` and `serve deploy` lines name real recipes, and their overrides are
    fields the specs accept (a typo would only show on the GPU machine otherwise)."""
    from studio.recipes import apply_overrides, read_yaml, validate_spec
    from studio.serving.recipe import ServingRecipe
    from studio.train.spec import TrainSpec

    r = run("--dry-run", "--work", str(tmp_path))
    checked = set()
    for line in r.stdout.splitlines():
        words = line.split()
        for verb, spec in ((["train", "submit"], TrainSpec), (["serve", "deploy"], ServingRecipe)):
            if len(words) > 3 and words[1:3] == verb:
                recipe, overrides = words[3], [w for w in words[4:] if not w.startswith("--")]
                parsed = validate_spec(spec, apply_overrides(read_yaml(ROOT / recipe), overrides), recipe)
                checked.add(parsed.name)
                if spec is TrainSpec:
                    assert parsed.base_model == str(tmp_path / "home/models/tiny")
                    assert parsed.resources.num_workers == 1
    assert checked == {"gpu-check-sft", "gpu-check-qlora", "gpu-check-grpo", "gpu-check-zero2",
                       "gpu-check-vllm", "gpu-check-sglang"}


def test_planned_tiny_shape_is_a_valid_model_spec(tmp_path):
    from studio.models.tiny import TinyModelSpec
    from studio.recipes import apply_overrides

    line = next(w for w in run("--dry-run", "--work", str(tmp_path)).stdout.splitlines() if "make-tiny --out" in w)
    overrides = [w for w in line.split() if "=" in w]
    spec = TinyModelSpec.model_validate(apply_overrides({}, overrides))
    assert spec.hidden_size // spec.num_attention_heads == 128 and spec.num_hidden_layers == 8


def test_wheelhouse_script_needs_a_folder():
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_wheelhouse.sh")], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "usage: bash scripts/gpu_wheelhouse.sh DIR" in r.stderr
    r = subprocess.run(["bash", str(ROOT / "scripts/gpu_wheelhouse.sh"), "w", "--bogus"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "unknown option '--bogus'" in r.stderr


@pytest.mark.skipif(has_gpu(), reason="this machine has a GPU: the script would run the check")
def test_a_failed_step_is_in_the_report_with_its_error_tail(tmp_path):
    """With an nvidia-smi that lists a GPU but CPU torch, `prepare` fails at its first command: the
    report says so, with the log's tail, and the exit status is 1 (the studio is never started)."""
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "GPU 0: Fake GPU (UUID: GPU-0)"\n')
    fake.chmod(0o755)
    out = tmp_path / "report.json"
    r = subprocess.run(["bash", str(SCRIPT), "--work", str(tmp_path / "w"), "--out", str(out), "--only", "qlora"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"})
    assert r.returncode == 1, r.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is False and report["gpus"] == ["GPU 0: Fake GPU (UUID: GPU-0)"]
    [step] = report["steps"]
    assert step["name"] == "prepare" and step["ok"] is False and step["exit_code"] == 1
    assert "torch sees no CUDA GPU" in step["error_tail"][-1] and "make setup GPU=1" in step["error_tail"][-1]
    assert report["versions"]["torch"] and "seconds" in step
