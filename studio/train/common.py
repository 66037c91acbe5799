"""What every training runner shares, one piece of logic each: the split as an HF Dataset, the
tokenizer, LoRA/QLoRA, TrainingArguments from HyperSpec, the DeepSpeed config, per-step metrics, and
``fit``: Ray Train checkpoint reporting, resume, and the final adapter.

How checkpoints flow (Ray Train V2 + transformers): each rank's HF Trainer writes its checkpoints to
its own node-local directory; ``RayTrainReportCallback.on_save`` copies the newest one into a Ray
``Checkpoint`` and every rank calls ``ray.train.report`` (a barrier), so Ray merges the ranks' files
(rank 0: adapter, optimizer, scheduler, trainer state; every rank: its RNG state, its ZeRO shards) into
one directory under ``RunConfig.storage_path``. After a worker dies, Ray Train restarts the group and
``ray.train.get_checkpoint()`` returns that directory; ``trainer.train(resume_from_checkpoint=...)``
then restores weights, optimizer, scheduler, step counter and data position. A new attempt of the same
job reuses the run's storage path and name, so Ray restores the same checkpoint history. The run's
last checkpoint holds ``final/`` (the plain PEFT directory, or the full model) and its metrics: that
is what ``run.py`` registers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
from ray.train import Checkpoint
from ray.train.huggingface.transformers import RayTrainReportCallback, prepare_trainer
from transformers import TrainerCallback

from studio.data.snapshots import load_split
from studio.store.db import session_scope
from studio.store.models import Job, JobMetric
from studio.train import tracking
from studio.train.spec import TrainSpec
from studio.train.worker import FINAL_DIR, FINAL_METRICS, FINAL_PARITY, WorkerJob

log = logging.getLogger(__name__)


def load_rows(job: WorkerJob) -> list[dict[str, Any]]:
    """The training rows: ``data.split`` of the snapshot, less what ``eval.split_ratio`` holds out."""
    spec = job.train_spec
    data = spec.data
    return load_split(job.snapshot_uri, data.split, spec.holdout_ratio(), data.seed).to_pylist()


def load_eval_rows(job: WorkerJob) -> list[dict[str, Any]] | None:
    """The validation rows (``eval``): the ``eval.dataset`` snapshot, or the share of the training
    snapshot ``eval.split_ratio`` holds out (the same seeded split ``load_rows`` leaves out). None: no eval."""
    spec = job.train_spec
    if spec.eval is None:
        return None
    if job.eval_snapshot_uri:
        return load_split(job.eval_snapshot_uri).to_pylist()
    return load_split(job.snapshot_uri, "validation", spec.eval.split_ratio, spec.data.seed).to_pylist()


def to_dataset(rows: list[dict[str, Any]]):
    from datasets import Dataset

    return Dataset.from_list(rows)


def load_tokenizer(base_model: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:  # batching needs one; many base models ship without
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def has_generation_markers(tokenizer) -> bool:
    """Whether the chat template marks assistant text with ``{% generation %}`` (TRL's assistant masks)."""
    template = tokenizer.chat_template or ""
    return "generation" in template and "endgeneration" in template


def use_bf16(spec: TrainSpec) -> bool:
    # TRL and transformers default to bf16, which on CPU mismatches DeepSpeed configs and slows LoRA.
    return spec.hyper.bf16 if spec.hyper.bf16 is not None else spec.resources.use_gpu


def model_init_kwargs(spec: TrainSpec) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained``, used by TRL when the model is given by name."""
    return {"dtype": "bfloat16" if use_bf16(spec) else "float32"}


def quantization_config(spec: TrainSpec):
    """QLoRA: the frozen base in 4-bit NF4 (bitsandbytes; also runs on CPU, slowly)."""
    if spec.adapter != "qlora":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16 if use_bf16(spec) else torch.float32)


def lora_config(spec: TrainSpec):
    if spec.adapter == "full":
        return None
    from peft import LoraConfig

    return LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                      target_modules=spec.lora.target_modules, task_type="CAUSAL_LM")


def policy(job: WorkerJob):
    """What the trainer trains: ``(model, peft_config, quantization_config)`` for TRL's trainers.

    Without ``init_adapter``: the base model by name and a fresh LoRA (TRL loads and wraps it).
    With it: the base with that adapter loaded trainable (``PeftModel.from_pretrained(...,
    is_trainable=True)``), so training continues from its weights; the spec's ``lora`` section is
    then unused (the adapter brings its own rank and targets). TRL's ``DPOTrainer`` given such a
    ``PeftModel`` (and no ``ref_model``) adds a frozen copy of it as the reference ("ref" adapter),
    so DPO after SFT is measured against the SFT policy, not the bare base.
    """
    spec = job.train_spec
    if not job.init_adapter:
        return job.base_model, lora_config(spec), quantization_config(spec)
    import torch
    from peft import PeftModel, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    quant = quantization_config(spec)
    model = AutoModelForCausalLM.from_pretrained(
        job.base_model, dtype=torch.bfloat16 if use_bf16(spec) else torch.float32, quantization_config=quant)
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.hyper.gradient_checkpointing)
    return PeftModel.from_pretrained(model, local_adapter_dir(job.init_adapter), is_trainable=True), None, None


def local_adapter_dir(uri: str) -> str:
    """A local directory holding the adapter at ``uri`` (an artifact URI is downloaded once per node)."""
    from studio.egress import guard_location
    from studio.store.artifacts import filesystem

    fs, path = filesystem(guard_location(uri, what="init_adapter"))  # checked again where it is fetched
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    if protocol in ("file", "local"):
        return path
    dest = Path(tempfile.gettempdir()) / "studio-init-adapters" / hashlib.sha1(uri.encode()).hexdigest()[:16]
    if not (dest / "adapter_config.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent))
        fs.get(path.rstrip("/") + "/", str(tmp), recursive=True)
        try:
            tmp.rename(dest)
        except OSError:  # another rank on this node was first
            shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def deepspeed_config(spec: TrainSpec) -> dict[str, Any] | None:
    ds = spec.deepspeed
    if ds is None:
        return None
    if ds.config is not None:
        return ds.config
    zero: dict[str, Any] = {"stage": ds.stage, "overlap_comm": True, "contiguous_gradients": True}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    # "auto" lets the HF integration fill these from TrainingArguments, so they never disagree.
    # train_batch_size is left to DeepSpeed (micro x accumulation x its world size).
    return {"zero_optimization": zero, "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto"}


def rank_output_dir(job: WorkerJob) -> Path:
    """Node-local scratch for this rank's HF checkpoints; Ray copies them to persistent storage."""
    ctx = ray.train.get_context()
    # Job ids repeat across studios (databases) sharing a machine: key the folder on both.
    studio = hashlib.sha1(job.db_url.encode()).hexdigest()[:8]
    path = Path(tempfile.gettempdir()) / "studio-train" / f"{studio}-job-{job.job_id}" / f"rank-{ctx.get_world_rank()}"
    shutil.rmtree(path, ignore_errors=True)  # a restarted worker must not pick up a stale local checkpoint
    path.mkdir(parents=True)
    return path


def save_schedule(spec: TrainSpec, num_rows: int) -> dict[str, Any]:
    c = spec.checkpoint
    if c.every_steps:
        return {"save_strategy": "steps", "save_steps": c.every_steps}
    if (c.every_epochs or 1) == 1:
        return {"save_strategy": "epoch"}
    world = spec.resources.num_workers
    h = spec.hyper
    steps_per_epoch = max(1, math.ceil(math.ceil(num_rows / world) / h.batch_size / h.gradient_accumulation_steps))
    return {"save_strategy": "steps", "save_steps": steps_per_epoch * c.every_epochs}


def training_args(config_cls, job: WorkerJob, num_rows: int, **method_fields):
    """``config_cls`` (SFTConfig, DPOConfig, …) from the spec; ``method_fields`` are the method's own."""
    spec = job.train_spec
    h = spec.hyper
    return config_cls(
        output_dir=str(rank_output_dir(job)),
        per_device_train_batch_size=h.batch_size,
        gradient_accumulation_steps=h.gradient_accumulation_steps,
        num_train_epochs=h.epochs,
        max_steps=h.max_steps or -1,
        learning_rate=h.learning_rate,
        lr_scheduler_type=h.lr_scheduler,
        warmup_steps=h.warmup_ratio,  # a float < 1 is a ratio of the total steps
        weight_decay=h.weight_decay,
        seed=h.seed,
        logging_steps=h.logging_steps,
        bf16=use_bf16(spec),
        fp16=False,
        gradient_checkpointing=h.gradient_checkpointing,  # TRL defaults it on; the spec decides
        use_cpu=not spec.resources.use_gpu,
        deepspeed=deepspeed_config(spec),
        ddp_find_unused_parameters=False,  # frozen base weights: nothing is unused among trained params
        include_num_input_tokens_seen="non_padding",  # tokens/s in the metrics
        save_total_limit=spec.checkpoint.keep,  # local copies; Ray keeps CheckpointConfig.num_to_keep
        # MLflow goes through StudioMetricsCallback (the job's own run; transformers' MLflowCallback would
        # open a process-global run of its own); tensorboard and wandb through transformers' integrations.
        report_to=report_to(job),
        run_name=f"job-{job.job_id}",
        disable_tqdm=True,
        model_init_kwargs=model_init_kwargs(spec),
        **save_schedule(spec, num_rows),
        **eval_schedule(spec),
        **method_fields,
    )


def eval_schedule(spec: TrainSpec) -> dict[str, Any]:
    """TrainingArguments of validation during training (``eval``): transformers' own eval loop."""
    ev = spec.eval
    if ev is None:
        return {"eval_strategy": "no"}
    args = {"eval_strategy": "steps", "eval_steps": ev.eval_steps or spec.hyper.logging_steps,
            "per_device_eval_batch_size": ev.batch_size or spec.hyper.batch_size}
    if ev.early_stopping_patience:
        # EarlyStoppingCallback compares this; the final adapter stays the last one (no best-model reload).
        args["metric_for_best_model"], args["greater_is_better"] = spec.validation_metric()
    return args


def report_to(job: WorkerJob) -> list[str]:
    """transformers' integrations for ``tracking.report_to`` (mlflow excluded: ours), with their
    environment: event files and offline wandb runs under the job's tracking folder."""
    import os

    trackers = [t for t in job.train_spec.tracking.report_to if t != "mlflow"]
    if trackers and job.tracking_dir:
        Path(job.tracking_dir).mkdir(parents=True, exist_ok=True)
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(job.tracking_dir) / "tensorboard")
        os.environ.setdefault("WANDB_DIR", job.tracking_dir)
        os.environ.setdefault("WANDB_PROJECT", job.train_spec.name)
        os.environ.setdefault("WANDB_MODE", "offline")  # no account needed; `wandb sync` uploads later
    return trackers or ["none"]


def early_stopping(spec: TrainSpec) -> list:
    """transformers' EarlyStoppingCallback on the validation metric (eval_loss; GRPO: eval_reward)
    when ``eval.early_stopping_patience`` is set."""
    if spec.eval is None or not spec.eval.early_stopping_patience:
        return []
    from transformers import EarlyStoppingCallback

    return [EarlyStoppingCallback(early_stopping_patience=spec.eval.early_stopping_patience)]


# Counters and the Trainer's own since-start speed (it rides along with every log); we log tokens_per_s.
# An evaluation's timings say how long validation took, not how the model does.
_SKIP_LOG_KEYS = {"step", "total_flos", "num_input_tokens_seen", "num_tokens", "train_runtime",
                  "train_tokens_per_second", "train_samples_per_second", "train_steps_per_second",
                  "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_num_tokens"}


class StudioMetricsCallback(TrainerCallback):
    """Rank 0 writes each logged step (loss, lr, tokens/s and the method's own metrics) to the
    ``job_metrics`` table and the job's MLflow run; every rank remembers where this session began."""

    def __init__(self, job: WorkerJob):
        self.job = job
        self.to_mlflow = bool(job.mlflow_run_id) and "mlflow" in job.train_spec.tracking.report_to
        self.start_step = 0
        self.start_tokens = 0
        self._last: tuple[float, int] | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        # Runs after the Trainer loaded a checkpoint's state, so global_step > 0 means a resume.
        self.start_step, self.start_tokens = state.global_step, state.num_input_tokens_seen
        self._last = (time.monotonic(), state.num_input_tokens_seen)
        if state.is_world_process_zero and state.global_step > 0:
            self._write({"resumed_from_step": float(state.global_step)}, state.global_step)
        if state.is_world_process_zero and state.max_steps > 0:  # what progress counts to (epochs or max_steps)
            with session_scope(self.job.db_url) as s:
                row = s.get(Job, self.job.job_id)
                row.result = {**(row.result or {}), "total_steps": int(state.max_steps),
                              "epochs": float(state.num_train_epochs)}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "train_loss" in logs:
            return  # the end-of-training summary is reported once, with the final checkpoint
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        metrics = {("lr" if k == "learning_rate" else k): float(v) for k, v in logs.items()
                   if k not in _SKIP_LOG_KEYS and isinstance(v, (int, float)) and math.isfinite(v)}
        if "eval_loss" in logs:  # a validation pass: eval_* beside the step's training metrics
            metrics.pop("epoch", None)
        else:
            if self._last is not None and now > self._last[0]:
                metrics["tokens_per_s"] = (tokens - self._last[1]) / (now - self._last[0])
            self._last = (now, tokens)
        self._write(metrics, state.global_step)

    def _write(self, metrics: dict[str, float], step: int) -> None:
        with session_scope(self.job.db_url) as s:
            s.add_all(JobMetric(job_id=self.job.job_id, attempt=self.job.attempt, step=step, key=k[:64], value=v)
                      for k, v in metrics.items())
        if self.to_mlflow:
            tracking.log_metrics(self.job.mlflow_uri, self.job.mlflow_run_id, metrics, step)


def fit(trainer, job: WorkerJob) -> None:
    """Train with checkpoints reported to Ray Train, resuming from the latest one if there is one,
    then report the final adapter as the run's last checkpoint (what ``run.py`` registers)."""
    metrics_cb = StudioMetricsCallback(job)
    trainer.add_callback(metrics_cb)
    for callback in early_stopping(job.train_spec):
        trainer.add_callback(callback)
    trainer.add_callback(RayTrainReportCallback())
    trainer = prepare_trainer(trainer)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        output = trainer.train()
    else:
        with checkpoint.as_directory() as ckpt_dir:
            if (Path(ckpt_dir) / FINAL_DIR).is_dir():  # the run had finished; only registration failed
                _report_final_again(Path(ckpt_dir))
                return
            output = trainer.train(resume_from_checkpoint=str(Path(ckpt_dir) / RayTrainReportCallback.CHECKPOINT_NAME))

    runtime = output.metrics.get("train_runtime") or 0.0
    tokens = trainer.state.num_input_tokens_seen - metrics_cb.start_tokens
    final = {"global_step": output.global_step, "train_loss": output.training_loss,
             "train_runtime_s": runtime, "tokens_per_s": tokens / runtime if runtime else 0.0,
             "resumed_from_step": metrics_cb.start_step, **peak_memory(trainer)}
    with tempfile.TemporaryDirectory() as tmp:
        trainer.save_model(str(Path(tmp) / FINAL_DIR))  # every rank calls it (ZeRO-3 gathers); rank 0 writes
        rank0 = ray.train.get_context().get_world_rank() == 0
        if rank0:
            # A pickle of TrainingArguments: no loader needs it, and the registry should hold no pickles.
            (Path(tmp) / FINAL_DIR / "training_args.bin").unlink(missing_ok=True)
            # PEFT saves every adapter of the model; DPO from an init_adapter holds its frozen
            # reference copy as a second one ("ref/"), which is not part of the result.
            for extra in (Path(tmp) / FINAL_DIR).glob("*/adapter_config.json"):
                shutil.rmtree(extra.parent)
            (Path(tmp) / FINAL_METRICS).write_text(json.dumps(final))
            record_parity_answers(job, Path(tmp))
        ray.train.report(final, checkpoint=Checkpoint.from_directory(tmp) if rank0 else None)
    scratch = Path(trainer.args.output_dir)
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        scratch.parent.rmdir()  # the job's folder, once the last rank on this node is done
    except OSError:
        pass


def record_parity_answers(job: WorkerJob, ckpt_dir: Path) -> None:
    """Rank 0: the saved adapter's answers to the parity prompts, beside it (``FINAL_PARITY``), for
    the driver to register with the version (studio.train.parity). Best effort: without the file
    the driver computes them itself."""
    from studio.train.parity import worker_answers

    try:
        answers = worker_answers(job.snapshot_uri, job.base_model, ckpt_dir / FINAL_DIR)
    except Exception as e:  # noqa: BLE001 - the driver records them instead
        log.warning("parity answers not computed on the worker (%s: %s); the driver will", type(e).__name__, e)
        return
    if answers is not None:
        (ckpt_dir / FINAL_PARITY).write_text(json.dumps(answers))


def peak_memory(trainer) -> dict[str, float]:
    """The largest peak of any rank (what ``studio train plan`` estimates per worker, in MiB): the
    worker process's peak RSS (``peak_rss_mb``), and on GPU the peak the CUDA allocator reserved
    (``peak_gpu_memory_mb``). Every rank calls it (a gather)."""
    import resource

    import torch

    peaks = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024]  # KiB on Linux
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        peaks.append(torch.cuda.max_memory_reserved() / 2**20)
    local = torch.tensor(peaks, dtype=torch.float64, device=trainer.args.device)
    every = trainer.accelerator.gather(local.unsqueeze(0)).reshape(-1, len(peaks)).amax(dim=0).tolist()
    return dict(zip(("peak_rss_mb", "peak_gpu_memory_mb"), every))


def _report_final_again(ckpt_dir: Path) -> None:
    final = json.loads((ckpt_dir / FINAL_METRICS).read_text())
    rank0 = ray.train.get_context().get_world_rank() == 0
    ray.train.report(final, checkpoint=Checkpoint.from_directory(str(ckpt_dir)) if rank0 else None)
