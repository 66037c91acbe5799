"""TrainSpec: one schema for a training job, shared by YAML recipes (``configs/train/``), the CLI
(``studio train submit RECIPE key=value …``) and HTTP (``POST /api/jobs``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, model_validator

from studio.cluster import ResourcesSpec
from studio.jobs.results import JobResult
from studio.recipes import Spec
from studio.scorer_specs import ScorerSpec

Method = Literal["cpt", "sft", "dpo", "grpo"]

# init_adapter: a registry reference (name, or name@N) unless it reads as a location.
ADAPTER_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}(@[0-9]+)?")


def is_adapter_location(value: str) -> bool:
    """An init_adapter given as a directory (``${STUDIO_HOME}/...`` too) or an artifact URI, not a
    registry reference."""
    return "://" in value or value.startswith(("/", ".", "~", "$"))

# Which dataset kinds each method can train on (studio.data.kinds.DatasetKind values).
METHOD_KINDS: dict[str, tuple[str, ...]] = {
    "cpt": ("text",),
    "sft": ("chat", "prompt_completion"),
    "dpo": ("preference",),
    "grpo": ("prompt_completion", "chat"),
}


class DataSpec(Spec):
    dataset: str = Field(description="Dataset snapshot: name (newest version), name@N, or snapshot id.")
    split: Literal["train", "validation", "all"] = Field(
        default="train", description="Which split of the snapshot to train on."
    )
    validation_ratio: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="Share of rows held out as the validation split."
    )
    seed: int = Field(default=0, description="Seed of the train/validation split.")


class LoraSpec(Spec):
    r: int = Field(default=8, ge=1, description="LoRA rank.")
    alpha: int = Field(default=16, ge=1, description="LoRA alpha (scaling = alpha / r).")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="LoRA dropout.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default="all-linear", description="Module names to adapt, or 'all-linear'."
    )


class HyperSpec(Spec):
    epochs: float = Field(default=1.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps (overrides epochs).")
    learning_rate: float = Field(default=2e-4, gt=0, description="Peak learning rate.")
    lr_scheduler: str = Field(default="linear", description="transformers scheduler name (linear, cosine, constant, ...).")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(default=8, ge=1, description="Examples per worker per step.")
    gradient_accumulation_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step.")
    max_seq_length: int = Field(default=512, ge=8, description="Truncate examples to this many tokens.")
    seed: int = Field(default=0, description="Training seed.")
    logging_steps: int = Field(default=10, ge=1, description="Report metrics every N steps.")
    bf16: bool | None = Field(default=None, description="bf16 mixed precision; default: on with a GPU, off on CPU.")
    gradient_checkpointing: bool = Field(default=False, description="Trade compute for memory.")


class DeepSpeedSpec(Spec):
    stage: Literal[0, 1, 2, 3] = Field(default=2, description="ZeRO stage.")
    offload_optimizer: bool = Field(default=False, description="ZeRO optimizer offload to CPU.")
    config: dict[str, Any] | None = Field(default=None, description="A full DeepSpeed config; overrides stage.")


class CheckpointSpec(Spec):
    every_steps: int | None = Field(default=None, ge=1, description="Checkpoint every N steps.")
    every_epochs: int | None = Field(default=1, ge=1, description="Checkpoint every N epochs (if every_steps unset).")
    keep: int = Field(default=2, ge=1, description="Checkpoints kept per job.")


class DPOSpec(Spec):
    beta: float = Field(default=0.1, gt=0, description="DPO temperature.")
    loss_type: str = Field(default="sigmoid", description="TRL DPO loss type.")


class RewardSpec(Spec):
    type: Literal["exact_match", "regex", "json_schema", "python", "judge"] = Field(
        description="exact_match: the stripped completion equals the reference answer (the completion "
        "column, or the last assistant turn of a chat row); regex: the completion matches `pattern`; "
        "json_schema: the completion is JSON valid under `schema`; python: a callable named by import "
        "path; judge: an LLM judge through the gateway scores 0-10."
    )
    weight: float = Field(default=1.0, description="Weight of this reward in the weighted sum.")
    pattern: str | None = Field(default=None,
                                description="regex: pattern the whole completion must match (re.fullmatch).")
    schema_: dict[str, Any] | None = Field(default=None, alias="schema", description="json_schema: the JSON schema.")
    callable: str | None = Field(
        default=None, description="python: 'package.module:function', called as TRL calls reward functions: "
        "f(prompts=..., completions=..., completion_ids=..., reference=..., **kwargs) -> list[float | None]. "
        "Only studio.train.rewards' own (positional_overlap, char_f1) or functions an admin listed in "
        "STUDIO_REWARD_ALLOWLIST; anything else is refused before it is imported."
    )
    judge_model: str | None = Field(default=None, description="judge: gateway model group that judges.")
    judge_prompt: str | None = Field(
        default=None, description="judge: instructions for the judge; it must answer with a score 0-10 "
        "(default: rate how well the answer fulfils the request).")
    name: str | None = Field(default=None, description="Name in the metrics (rewards/<name>/mean); default: the type.")

    @model_validator(mode="after")
    def _fields_of_type(self) -> RewardSpec:
        needs = {"regex": "pattern", "json_schema": "schema_", "python": "callable", "judge": "judge_model"}
        field = needs.get(self.type)
        if field and getattr(self, field) is None:
            raise ValueError(f"a {self.type} reward needs '{field.rstrip('_')}'")
        return self


class RolloutSpec(Spec):
    engine: Literal["vllm", "hf"] = Field(
        default="vllm", description="vllm: a vLLM engine in a Ray actor, kept warm for the whole job, samples the "
        "rollouts; each step the policy's LoRA is merged into its weights in place, from memory; hf: transformers "
        "generate inside the trainer (slow fallback; also used, loudly, when vLLM cannot be imported).")
    num_cpus: float = Field(default=1.0, ge=0, description="Logical CPUs the rollout actor reserves.")
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs the rollout actor reserves (1 on a GPU cluster).")
    dtype: str = Field(default="auto", description="vLLM dtype; the tiny float32 test model needs float32 on CPU.")
    max_model_len: int | None = Field(default=None, ge=16, description="vLLM context length; default: the model's.")
    max_num_seqs: int = Field(default=64, ge=1, description="Sequences vLLM decodes together at most.")
    kv_cache_space_gib: float = Field(default=1.0, gt=0, description="KV cache on CPU in GiB (VLLM_CPU_KVCACHE_SPACE, a whole number: rounded up).")
    gpu_memory_utilization: float = Field(default=0.5, gt=0, le=1,
                                          description="Share of the GPU the engine may take (GPU only).")
    enforce_eager: bool = Field(default=True, description="Skip graph capture (a minute of warm-up on CPU).")
    cpu_processes: Literal[1, 2] = Field(
        default=1, description="CPU only: 1 runs the model inside vLLM's EngineCore process (uni executor, "
        "OpenMP threads: cpu_threads), which idles without polling while the trainers work; 2 gives it a worker "
        "process of its own (mp executor, vLLM's own thread binding: reserved_cpus), whose queue both processes "
        "busy-poll for a second after every message.")
    cpu_threads: int | None = Field(
        default=None, ge=1, description="CPU only, cpu_processes 1: OpenMP threads of the engine; default: every "
        "core the actor may run on (the trainer ranks wait while it samples).")
    reserved_cpus: int | None = Field(
        default=None, ge=0, description="CPU only, cpu_processes 2: cores vLLM keeps free of its OpenMP compute "
        "threads (VLLM_CPU_NUM_OF_RESERVED_CPU); default: vLLM's choice (1 core, for its scheduler process).")
    step_timeout_s: float = Field(
        default=600, gt=0, description="Longest a policy update or one rank's rollouts may take; past it the step "
        "fails naming the rollout engine (the job's retry resumes from its checkpoint) instead of hanging.")


class GRPOSpec(Spec):
    num_generations: int = Field(default=4, ge=2, description="Completions sampled per prompt (one GRPO group).")
    max_completion_length: int = Field(default=16, ge=1, description="Tokens per sampled completion.")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(default=1.0, gt=0, le=1, description="Nucleus sampling of rollouts.")
    beta: float = Field(default=0.0, ge=0, description="KL coefficient (0: no reference model).")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Where rollouts are generated.")
    rewards: list[RewardSpec] = Field(
        default_factory=lambda: [RewardSpec(type="exact_match")], min_length=1,
        description="Reward functions; the reward is their weighted sum.")


class ValidationSpec(Spec):
    """Validation during training (TRL/transformers' own evaluation loop): ``eval_loss`` and the
    method's eval metrics (DPO: ``eval_rewards/accuracies``, ``eval_rewards/margins``, ...; GRPO:
    ``eval_reward`` and ``eval_rewards/<func>/mean`` of completions sampled for held-out prompts)
    logged beside the training loss every ``eval_steps``."""

    dataset: str | None = Field(
        default=None, description="Validation snapshot: name (newest version), name@N, or snapshot id; of a kind "
        "the method trains on. Or split_ratio instead.")
    split_ratio: float | None = Field(
        default=None, gt=0.0, lt=1.0, description="Hold out this share of data.dataset as the validation rows "
        "(a seeded split, data.seed); training runs on the rest. Or dataset instead.")
    eval_steps: int | None = Field(default=None, ge=1,
                                   description="Evaluate every N optimizer steps; default: hyper.logging_steps.")
    batch_size: int | None = Field(default=None, ge=1,
                                   description="Validation examples per worker per batch; default: hyper.batch_size.")
    early_stopping_patience: int | None = Field(
        default=None, ge=1, description="Stop training after the validation metric failed to improve on its best "
        "value for this many evaluations in a row (transformers' EarlyStoppingCallback): eval_loss (lower is "
        "better), for GRPO eval_reward (the weighted reward of held-out prompts' completions, higher is better). "
        "The result is the adapter at the stop. Default: no early stopping.")

    @model_validator(mode="after")
    def _one_source(self) -> ValidationSpec:
        if (self.dataset is None) == (self.split_ratio is None):
            raise ValueError("an eval section needs exactly one of 'dataset' (a validation snapshot) or "
                             "'split_ratio' (a share of data.dataset to hold out, e.g. 0.1)")
        return self


ReportTo = Literal["mlflow", "tensorboard", "wandb"]


class TrackingSpec(Spec):
    report_to: list[ReportTo] = Field(
        default_factory=lambda: ["mlflow"], description="Where per-step metrics go: mlflow (the job's MLflow run, "
        "the one the studio reads back), tensorboard and wandb (transformers' own integrations; event files and "
        "offline wandb runs under $STUDIO_HOME/tracking/<name>/job-<id>; wandb is offline unless WANDB_MODE "
        "says otherwise). The job's own metrics (studio jobs show, the UI) are always recorded.")

    @model_validator(mode="after")
    def _unique(self) -> TrackingSpec:
        self.report_to = list(dict.fromkeys(self.report_to))
        return self


class EvalAfterSpec(Spec):
    dataset: str = Field(description="Held-out snapshot to score the new version on (name, name@N or snapshot id): "
                         "prompt_completion or chat rows, each prompt answered greedily.")
    metric: Literal["exact_match"] = Field(default="exact_match", description="exact_match: the share of rows whose "
                                           "answer equals the completion (both stripped).")
    max_new_tokens: int = Field(default=16, ge=1, description="Longest answer generated per row, in tokens.")
    limit: int | None = Field(default=None, ge=1, description="Score only the first N rows; default: every row.")


class AfterTrainingSpec(Spec):
    """A training recipe's ``after_training`` section: once the job SUCCEEDED, the scheduler
    evaluates the new version against its name's champion on the golden dataset (auto-eval) and,
    with ``promote``, promotes it through the promotion gate (auto-promotion)."""

    promote: bool = Field(default=False, description="Promote the new version to champion when it beats the "
                          "champion by the gate's margin (a refusal is recorded like a manual one). false: "
                          "only evaluate it against the champion.")
    dataset: str | None = Field(default=None, description="Golden dataset (name, name@N or snapshot id); default: "
                                "the dataset of the name's gate (`studio models gate NAME`). Neither: nothing "
                                "runs, and the job's result says why.")
    scorer: ScorerSpec | None = Field(default=None, description="The deciding scorer (an EvalSpec scorer, "
                                          "e.g. {type: exact_match}); default: the gate's, else exact_match.")
    margin: float | None = Field(default=None, ge=0, description="Required lead over the champion; default: the "
                                 "gate's, else 0.")
    limit: int | None = Field(default=None, gt=0, description="Evaluate only the first N rows; default: the gate's.")
    max_tokens: int | None = Field(default=None, gt=0, description="Longest answer in the eval; default: the "
                                   "gate's, else 64.")


class TrainSpec(Spec):
    """A training job: what to train, on what, how, where, and under which registry name."""

    home_paths = ("base_model", "init_adapter")  # may start with ${STUDIO_HOME} (studio.recipes)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$",
                      description="Registry name the result is registered under (a new version each run).")
    method: Method = Field(description="cpt | sft | dpo | grpo")
    base_model: str = Field(description="Local model directory or hub id; a path may start with "
                            "${STUDIO_HOME} (this studio's home).")
    data: DataSpec = Field(description="Training data.")
    adapter: Literal["lora", "qlora", "full"] = Field(default="lora", description="What is trained.")
    init_adapter: str | None = Field(
        default=None,
        description="Start from this LoRA adapter instead of a fresh one: a registry reference (name@N, or a "
        "name for its champion, else its newest version) or an adapter directory (may start with ${STUDIO_HOME}) "
        "/ artifact URI (file://, "
        "s3://, ...). Its base model must be base_model; its LoRA shape replaces the lora section. DPO then "
        "uses a frozen copy of this adapter as the reference model. Not with adapter: full.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (lora and qlora).")
    hyper: HyperSpec = Field(default_factory=HyperSpec, description="Optimization hyperparameters.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Ray Train scaling.")
    deepspeed: DeepSpeedSpec | None = Field(default=None, description="Use DeepSpeed ZeRO.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpointing.")
    max_retries: int = Field(default=2, ge=0, description="Retries after a failed attempt (resume from checkpoint).")
    dpo: DPOSpec | None = Field(default=None, description="DPO settings (method: dpo).")
    grpo: GRPOSpec | None = Field(default=None, description="GRPO settings (method: grpo).")
    eval: ValidationSpec | None = Field(
        default=None, description="Validation during training: eval_loss (and the method's eval metrics) every "
        "eval_steps, on a validation snapshot or a held-out share of the data; optional early stopping.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment trackers the run reports to.")
    eval_after: EvalAfterSpec | None = Field(
        default=None, description="After training: score the new version on a dataset; the score is recorded with "
        "the version (metrics.exact_match) and is what a sweep with metric exact_match ranks.")
    after_training: AfterTrainingSpec | None = Field(
        default=None, description="Once SUCCEEDED: evaluate the new version against its name's champion on the "
        "golden dataset, and with promote: true promote it through the promotion gate (docs/evaluation.md).")

    @model_validator(mode="after")
    def _method_sections(self) -> TrainSpec:
        if self.method == "dpo" and self.dpo is None:
            self.dpo = DPOSpec()
        if self.method == "grpo" and self.grpo is None:
            self.grpo = GRPOSpec()
        if self.method != "dpo" and self.dpo is not None:
            raise ValueError("a 'dpo' section needs method: dpo")
        if self.method != "grpo" and self.grpo is not None:
            raise ValueError("a 'grpo' section needs method: grpo")
        if self.grpo is not None:
            per_step = self.hyper.batch_size * self.resources.num_workers
            if per_step % self.grpo.num_generations:
                raise ValueError(
                    f"GRPO needs whole groups per step: hyper.batch_size x resources.num_workers = {per_step} "
                    f"completions is not a multiple of grpo.num_generations = {self.grpo.num_generations}")
        if self.init_adapter is not None:
            self.init_adapter = self.init_adapter.strip()
            if not self.init_adapter:
                raise ValueError("init_adapter is empty: give a registry reference (name@N) or an adapter "
                                 "directory / URI, or leave it out to start from a fresh LoRA")
            if self.adapter == "full":
                raise ValueError("init_adapter starts from a LoRA adapter; adapter: full trains all weights "
                                 "(use adapter: lora or qlora, or drop init_adapter)")
            if not is_adapter_location(self.init_adapter) and not ADAPTER_REF.fullmatch(self.init_adapter):
                raise ValueError(f"init_adapter {self.init_adapter!r} is neither a registry reference (name or "
                                 "name@N) nor a path / URI (start it with /, ./, ~ or scheme://)")
        if self.eval is not None:
            self._check_eval()
        if self.adapter == "qlora" and self.deepspeed is not None and self.deepspeed.stage == 3:
            raise ValueError("QLoRA cannot be combined with DeepSpeed ZeRO-3")
        return self


    def _check_eval(self) -> None:
        ev = self.eval
        if self.grpo is not None and ev.batch_size is not None:
            per_batch = ev.batch_size * self.resources.num_workers
            if per_batch % self.grpo.num_generations:
                raise ValueError(
                    f"GRPO evaluates whole groups: eval.batch_size x resources.num_workers = {per_batch} completions "
                    f"is not a multiple of grpo.num_generations = {self.grpo.num_generations}")
        if ev.split_ratio is not None:
            if self.data.split != "train":
                raise ValueError(f"eval.split_ratio holds out part of the training data, but data.split is "
                                 f"{self.data.split!r}: set data.split=train, or give eval.dataset instead")
            if self.data.validation_ratio and self.data.validation_ratio != ev.split_ratio:
                raise ValueError(f"eval.split_ratio {ev.split_ratio} and data.validation_ratio "
                                 f"{self.data.validation_ratio} disagree: set one of them")

    def validation_metric(self) -> tuple[str, bool]:
        """The metric validation judges a run by (early stopping, best checkpoint): (name, greater is
        better). GRPO's eval_loss is its policy loss on freshly sampled completions, whose group-relative
        advantages average out to ~0 whatever the policy: its reward is what says how it does."""
        return ("eval_reward", True) if self.method == "grpo" else ("eval_loss", False)

    def holdout_ratio(self) -> float:
        """The share of ``data.dataset`` held out of training (``eval.split_ratio`` or ``data.validation_ratio``)."""
        if self.eval is not None and self.eval.split_ratio is not None:
            return self.eval.split_ratio
        return self.data.validation_ratio


class TrainResult(JobResult):
    """A training job's ``result``: what it registered, and the promotion gate's progress."""

    model: str | None = Field(default=None, description="The registered version, name@N.")
    uri: str | None = Field(default=None, description="Where the final adapter was copied.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Final numbers (loss, exact_match, ...).")
    after_training: dict[str, Any] | None = Field(
        default=None, description="The after_training state: done, outcome, reason, eval_id, ... "
        "(written by the scheduler, studio.evals.gate.after_training).")
