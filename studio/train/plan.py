"""Know before you launch: what a training recipe will need and take, computed before it is queued
(``studio train plan``, ``POST /api/jobs/plan``, the UI's Plan panel; submit refuses what cannot fit).

Read top to bottom: the model's shape on the meta device (no weights loaded) → parameters trained →
peak memory per worker (``memory_per_worker``, pure arithmetic, every factor named below) → tokens
and steps from the snapshot → wall time from this cluster's measured tokens/s → fit against the
free resources (``studio.train.resources``). Calibrated against the measured ``peak_rss_mb`` of the
tiny SFT and DPO runs (tests/train); docs/training.md "Plan a run" explains each term.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from studio.errors import StudioError
from studio.store.models import Job
from studio.train.preflight import ResolvedInputs, preflight
from studio.train.resources import FitCheck, FreeResources, check_fit, free_resources
from studio.train.spec import TrainSpec

MiB = 2**20
# The worker process before the model: Python, torch, transformers, TRL, PEFT, datasets and a Ray
# Train worker. CPU: measured, the tiny SFT and DPO runs peaked at 934 and 924 MiB RSS per worker
# (2026-12, torch 2.13 CPU), ~55 MiB of it the terms below. On a GPU worker the estimate is GPU
# memory and this is the CUDA context and allocator slack (not measured here: no GPU).
RUNTIME_MB = {"cpu": 875.0, "gpu": 600.0}
# Activation values kept for backward per token per transformer layer: ~10 of width hidden (norm
# inputs, q/k/v/o, residuals) and ~4 of width intermediate (gate, up, activation, product) for a
# Llama-style block. Gradient checkpointing keeps only each layer's input (1 × hidden) plus one
# layer's full set while it is recomputed.
ACT_HIDDEN, ACT_INTERMEDIATE = 10, 4
# Logits in fp32: the logits, their log-softmax and its gradient.
LOGIT_COPIES = 3
# Bytes per parameter of a 4-bit NF4 weight with double quantization (4.127 bits).
NF4_BYTES = 4.127 / 8
# The rows in memory per worker, as Python objects, an HF Dataset and its tokenized copy, per byte of
# the snapshot's Arrow table.
DATA_COPIES = 4
SAMPLE_ROWS = 1000  # rows tokenized to measure tokens per row; the rest are scaled from them


class ModelShape(BaseModel):
    model_type: str
    params_total: int = Field(description="Parameters of the base model (tied weights counted once).")
    linear_params: int = Field(description="Parameters in the transformer's linear layers (what QLoRA quantizes).")
    lora_params: int = Field(description="Parameters the recipe's LoRA adds (0 for adapter: full).")
    hidden_size: int
    intermediate_size: int
    num_layers: int
    vocab_size: int


class MemoryEstimate(BaseModel):
    """Peak memory of one worker, in MiB: RSS on CPU workers, GPU memory on GPU workers."""

    device: str = Field(description="cpu (process RSS) or gpu (GPU memory).")
    runtime_mb: float = Field(description="The worker process before the model (RUNTIME_MB).")
    weights_mb: float = Field(description="The base model at its dtype (NF4 linear layers with QLoRA); "
                              "÷ workers under ZeRO-3; plus a frozen reference copy for full-model DPO.")
    trained_mb: float = Field(description="Trained parameters in fp32 (LoRA) — full fine-tuning counts them in weights.")
    gradients_mb: float = Field(description="Gradients of the trained parameters (× 2 under DDP: bucket copies); "
                                "÷ workers under ZeRO-2/3.")
    optimizer_mb: float = Field(description="AdamW: 2 fp32 states per trained parameter; ÷ workers under ZeRO-1+, "
                                "0 on the GPU with offload_optimizer.")
    activations_mb: float = Field(description="batch × sequence × layers × (10·hidden + 4·intermediate) values, "
                                  "plus fp32 logits; gradient checkpointing keeps 1·hidden per layer.")
    data_mb: float = Field(description="The training rows held by the worker (CPU only).")
    total_mb: float = Field(description="The peak per worker: the sum of the above.")


class TrainPlan(BaseModel):
    """What a recipe will need and take, before it is queued."""

    name: str
    method: str
    adapter: str
    base_model: str
    model: ModelShape
    params_trained: int = Field(description="Parameters the optimizer updates.")
    trained_share: float = Field(description="params_trained / params_total.")
    memory: MemoryEstimate
    num_workers: int
    rows: int = Field(description="Training rows (the snapshot's split, less what validation holds out).")
    tokens: int = Field(description="Tokens in those rows (each sequence capped at max_seq_length; DPO: chosen "
                        "and rejected, each after the prompt, as the trainer counts them).")
    tokens_estimated: bool = Field(description="True when counted as characters / 4 (no tokenizer).")
    seq_length: int = Field(description="Longest row in tokens, capped at max_seq_length: what a batch pads to.")
    steps: int = Field(description="Optimizer steps: max_steps, or epochs × ceil(rows / workers / batch / accumulation).")
    tokens_to_train: int = Field(description="Tokens the run will process (tokens × epochs, or scaled to max_steps).")
    tokens_per_s: float | None = Field(description="This cluster's measured throughput for the base model; null when none.")
    throughput_from: list[int] = Field(description="The earlier jobs whose tokens/s it is (same base model).")
    wall_s: float | None = Field(description="tokens_to_train / tokens_per_s; null (unknown) without a measurement.")
    fit: FitCheck


@dataclass
class Tokens:
    total: int
    longest: int
    estimated: bool


class Unplannable(StudioError):
    """The model's size cannot be read without downloading it (a hub id not in the local cache, or a
    config.json that states no size): ``studio train plan`` says so; submit then queues unchecked."""


def plan_run(spec: TrainSpec, session: Session, *, cluster_gpus: float | None = None,
             inputs: ResolvedInputs | None = None) -> TrainPlan:
    """The plan of ``spec``; raises ``StudioError`` (4xx naming the field) when preflight would.
    ``inputs``: what preflight already resolved (submit's)."""
    inputs = inputs or preflight(spec, session, cluster_gpus=cluster_gpus)
    shape = model_shape(inputs.base_model, spec)
    from studio.data.snapshots import load_split

    table = load_split(inputs.snapshot_uri, spec.data.split, spec.holdout_ratio(), spec.data.seed)
    tokens = count_tokens(table.to_pylist(), inputs.base_model, spec.hyper.max_seq_length)
    seq = max(1, tokens.longest)
    if spec.grpo is not None:  # sampled completions, not the dataset's, follow the prompt
        seq = min(spec.hyper.max_seq_length, seq + spec.grpo.max_completion_length)
    memory = memory_per_worker(spec, shape, seq, table.nbytes)
    steps = total_steps(spec, table.num_rows)
    per_step = spec.hyper.batch_size * spec.resources.num_workers * spec.hyper.gradient_accumulation_steps
    avg = tokens.total / table.num_rows if table.num_rows else 0.0
    to_train = int(steps * min(per_step, table.num_rows or per_step) * avg) if spec.hyper.max_steps \
        else int(tokens.total * spec.hyper.epochs)
    rate, jobs = measured_tokens_per_s(session, inputs.base_model, spec.method)
    trained = shape.params_total if spec.adapter == "full" else shape.lora_params
    return TrainPlan(
        name=spec.name, method=spec.method, adapter=spec.adapter, base_model=inputs.base_model, model=shape,
        params_trained=trained, trained_share=trained / shape.params_total if shape.params_total else 0.0,
        memory=memory, num_workers=spec.resources.num_workers, rows=table.num_rows, tokens=tokens.total,
        tokens_estimated=tokens.estimated, seq_length=seq, steps=steps, tokens_to_train=to_train,
        tokens_per_s=rate, throughput_from=jobs, wall_s=to_train / rate if rate else None,
        fit=fit_with_knobs(spec, shape, seq, table.nbytes, memory, free_resources()))


def fit_with_knobs(spec: TrainSpec, shape: ModelShape, seq: int, data_bytes: int, memory: MemoryEstimate,
                   free: FreeResources) -> FitCheck:
    """The fit check; when it does not fit, the single overrides that would make it fit: a smaller
    batch (more accumulation, same examples per step), gradient checkpointing, QLoRA, more workers
    with ZeRO-3 (GPU), or fewer workers when the nodes cannot hold them all."""
    fit = check_fit(spec, memory.total_mb, memory.device, free)
    if fit.fits:
        return fit
    h, r = spec.hyper, spec.resources
    candidates: list[tuple[str, dict]] = []
    batch = h.batch_size // 2
    while batch >= 1:
        accumulation = h.gradient_accumulation_steps * math.ceil(h.batch_size / batch)
        candidates.append((f"hyper.batch_size={batch} hyper.gradient_accumulation_steps={accumulation}",
                           {"hyper": {"batch_size": batch, "gradient_accumulation_steps": accumulation}}))
        batch //= 2
    if not h.gradient_checkpointing:
        candidates.append(("hyper.gradient_checkpointing=true", {"hyper": {"gradient_checkpointing": True}}))
    if spec.adapter == "lora" and not spec.init_adapter:
        candidates.append(("adapter=qlora", {"adapter": "qlora"}))
    if r.use_gpu:
        for n in (2 * r.num_workers, 4 * r.num_workers):
            candidates.append((f"resources.num_workers={n} deepspeed.stage=3",
                               {"resources": {"num_workers": n}, "deepspeed": {"stage": 3}}))
    if r.num_workers > 1:
        candidates.append((f"resources.num_workers={max(1, r.num_workers // 2)}",
                           {"resources": {"num_workers": max(1, r.num_workers // 2)}}))
    knobs, tried = [], set()
    for label, change in candidates:
        knob = label.split("=")[0]
        if knob in tried:  # the first (mildest) setting of each knob that fits
            continue
        changed = _with(spec, change)
        estimate = memory_per_worker(changed, shape, seq, data_bytes)
        if check_fit(changed, estimate.total_mb, estimate.device, free).fits:
            knobs.append(f"{label} (~{estimate.total_mb:,.0f} MiB per worker)")
            tried.add(knob)
    return fit.model_copy(update={"knobs": knobs})


def _with(spec: TrainSpec, change: dict) -> TrainSpec:
    data = spec.model_dump(by_alias=True)
    for key, value in change.items():
        data[key] = {**(data.get(key) or {}), **value} if isinstance(value, dict) else value
    return TrainSpec.model_validate(data)


def refuse_unless_fits(plan: TrainPlan) -> None:
    """Submit's check: a recipe whose workers cannot fit is refused, naming the knob to turn."""
    if plan.fit.fits:
        return
    fix = ("set " + "; or ".join(plan.fit.knobs) if plan.fit.knobs else
           "lower hyper.batch_size or hyper.max_seq_length, set hyper.gradient_checkpointing=true, use "
           "adapter=qlora, add workers with deepspeed.stage=3 on GPU nodes, or run on a larger node")
    raise StudioError(f"{plan.name!r} cannot fit: {plan.fit.reason} (studio train plan shows the estimate)",
                      fix + " (an admin may queue it anyway with --force / ?force=true)")


def model_shape(base_model: str, spec: TrainSpec) -> ModelShape:
    """Parameter counts from the model's config.json on the meta device: no weights are read."""
    import json
    from pathlib import Path

    local = Path(base_model) / "config.json"
    if local.is_file():
        raw = json.loads(local.read_text())
        sized = {**raw, **(raw.get("text_config") or {})}
        if not any(k in sized for k in ("hidden_size", "n_embd", "d_model")):
            # transformers would fill in its defaults (a 7B Llama for model_type llama): not this model.
            raise Unplannable(f"base_model: {local} states no hidden_size, so the model's size is unknown",
                              "give the model's full config.json (as save_pretrained writes it)")
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        # Never a download (a server-side fetch a caller chose): a hub id must be in the local cache.
        config = AutoConfig.from_pretrained(base_model, local_files_only=True)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as e:
        raise Unplannable(f"base_model: cannot read the model config of {base_model!r} ({str(e)[:200]})",
                          "give a local model directory holding a config.json (or a hub id already in the "
                          "local cache)") from None
    model.tie_weights()  # tied embeddings are one tensor, counted once (not inside init_empty_weights)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0))
    output = model.get_output_embeddings()
    linear = lora = 0
    targets = spec.lora.target_modules
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is output:
            continue
        linear += module.weight.numel()
        if targets == "all-linear" or any(name == t or name.endswith("." + t) for t in targets):
            lora += spec.lora.r * (module.in_features + module.out_features)
    return ModelShape(
        model_type=config.model_type, params_total=sum(p.numel() for p in model.parameters()),
        linear_params=linear, lora_params=0 if spec.adapter == "full" else lora, hidden_size=hidden,
        intermediate_size=int(getattr(text, "intermediate_size", 0) or 4 * hidden),
        num_layers=int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0)),
        vocab_size=int(getattr(text, "vocab_size", 0)))


def memory_per_worker(spec: TrainSpec, shape: ModelShape, seq_length: int, data_bytes: int = 0) -> MemoryEstimate:
    """Peak memory of one worker (MiB); every term is documented on ``MemoryEstimate``."""
    device = "gpu" if spec.resources.use_gpu else "cpu"
    bf16 = spec.hyper.bf16 if spec.hyper.bf16 is not None else spec.resources.use_gpu
    dtype_bytes = 2 if bf16 else 4
    workers = spec.resources.num_workers
    ds = spec.deepspeed
    stage = (ds.config or {}).get("zero_optimization", {}).get("stage", 0) if ds and ds.config else (ds.stage if ds else 0)

    if spec.adapter == "qlora":
        weights = shape.linear_params * NF4_BYTES + (shape.params_total - shape.linear_params) * dtype_bytes
    else:
        weights = shape.params_total * dtype_bytes
    if spec.adapter == "full" and spec.method == "dpo":
        weights *= 2  # TRL's frozen reference model (LoRA DPO disables the adapter instead)
    trained = shape.params_total if spec.adapter == "full" else shape.lora_params
    trained_bytes = 0.0 if spec.adapter == "full" else trained * 4.0  # LoRA weights stay fp32
    if spec.adapter != "full" and spec.method == "dpo" and spec.init_adapter:
        trained_bytes *= 2  # a frozen copy of the starting adapter is the reference
    grad_bytes = trained * (dtype_bytes if spec.adapter == "full" else 4.0)
    if workers > 1 and stage == 0:
        grad_bytes *= 2  # DDP's gradient buckets
    optimizer = 2 * 4.0 * trained
    if stage >= 1:
        optimizer /= workers
    if stage >= 2:
        grad_bytes /= workers
    if stage >= 3:
        weights /= workers
    if ds is not None and ds.offload_optimizer and device == "gpu":
        optimizer = 0.0

    # DPO runs chosen and rejected through the model in one batch. (GRPO: the batch counts completions,
    # as TRL's does; its vLLM rollout engine is an actor of its own, not a worker, and not counted.)
    rows = spec.hyper.batch_size * (2 if spec.method == "dpo" else 1)
    tokens = rows * seq_length
    per_layer = shape.hidden_size if spec.hyper.gradient_checkpointing else \
        ACT_HIDDEN * shape.hidden_size + ACT_INTERMEDIATE * shape.intermediate_size
    activations = tokens * shape.num_layers * per_layer * dtype_bytes
    if spec.hyper.gradient_checkpointing:  # one layer recomputed at a time
        activations += tokens * (ACT_HIDDEN * shape.hidden_size + ACT_INTERMEDIATE * shape.intermediate_size) * dtype_bytes
    activations += tokens * shape.vocab_size * 4 * LOGIT_COPIES
    data = data_bytes * DATA_COPIES / workers if device == "cpu" else 0.0

    parts = {"runtime_mb": RUNTIME_MB[device], "weights_mb": weights / MiB, "trained_mb": trained_bytes / MiB,
             "gradients_mb": grad_bytes / MiB, "optimizer_mb": optimizer / MiB,
             "activations_mb": activations / MiB, "data_mb": data / MiB}
    parts = {k: round(v, 1) for k, v in parts.items()}
    return MemoryEstimate(device=device, total_mb=round(sum(parts.values()), 1), **parts)


def total_steps(spec: TrainSpec, rows: int) -> int:
    """Optimizer steps as the HF Trainer counts them (studio.train.common.save_schedule's per epoch)."""
    h = spec.hyper
    if h.max_steps:
        return h.max_steps
    per_rank = math.ceil(rows / spec.resources.num_workers)
    per_epoch = max(1, math.ceil(math.ceil(per_rank / h.batch_size) / h.gradient_accumulation_steps))
    return math.ceil(per_epoch * h.epochs)


def count_tokens(rows: list[dict], base_model: str, max_seq_length: int) -> Tokens:
    """Tokens per row as trained (the chat template applied when the tokenizer has one), capped at
    ``max_seq_length``: up to SAMPLE_ROWS rows tokenized, the total scaled to all rows. Without a
    tokenizer: characters / 4."""
    if not rows:
        return Tokens(0, 0, False)
    step = max(1, len(rows) // SAMPLE_ROWS)
    sample = rows[::step][:SAMPLE_ROWS]
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
        sequences = [[min(max_seq_length, n) for n in _row_tokens(tokenizer, r)] for r in sample]
        estimated = False
    except (OSError, ValueError):
        sequences = [[min(max_seq_length, len(str(r)) // 4)] for r in sample]
        estimated = True
    per_row = statistics.fmean(sum(seqs) for seqs in sequences)
    return Tokens(round(per_row * len(rows)), max(max(seqs) for seqs in sequences), estimated)


def _messages(prompt, answer) -> list[dict]:
    turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    answer = answer if isinstance(answer, list) else [{"role": "assistant", "content": str(answer)}]
    return [*turns, *answer]


def _row_tokens(tokenizer, row: dict) -> list[int]:
    """The lengths of a row's training sequences (DPO: chosen and rejected, each after the prompt)."""
    def length(messages=None, text=None) -> int:
        if messages is not None and tokenizer.chat_template:
            return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        text = text if text is not None else " ".join(str(m.get("content", "")) for m in messages)
        return len(tokenizer(text)["input_ids"])

    if "messages" in row:
        return [length(messages=row["messages"])]
    if "chosen" in row:
        return [length(messages=_messages(row.get("prompt", ""), row[k])) for k in ("chosen", "rejected")]
    if "completion" in row:
        return [length(messages=_messages(row["prompt"], row["completion"]))]
    return [length(text=str(row.get("text", "")))]


def measured_tokens_per_s(session: Session, base_model: str, method: str) -> tuple[float | None, list[int]]:
    """The median tokens/s of this cluster's earlier succeeded train jobs on ``base_model`` (the
    same method when there are such, else any), from their recorded final metrics."""
    jobs = session.scalars(select(Job).where(Job.kind == "train", Job.status == "SUCCEEDED")
                           .order_by(Job.id.desc()).limit(500)).all()
    measured = [(j.id, (j.spec or {}).get("method"), ((j.result or {}).get("metrics") or {}).get("tokens_per_s"))
                for j in jobs if (j.spec or {}).get("base_model") == base_model]
    measured = [(i, m, float(v)) for i, m, v in measured if isinstance(v, (int, float)) and v > 0]
    same = [x for x in measured if x[1] == method] or measured
    if not same:
        return None, []
    return statistics.median(v for _, _, v in same), [i for i, _, _ in same]


def check_submit_fits(spec: TrainSpec, session: Session, inputs: ResolvedInputs) -> TrainPlan | None:
    """Submit's fit check on what preflight resolved: refuses (400, naming the knob) a recipe that
    cannot fit; a model whose size is unknown (``Unplannable``) is queued unchecked."""
    try:
        plan = plan_run(spec, session, inputs=inputs)
    except Unplannable:
        return None
    refuse_unless_fits(plan)
    return plan
