"""The synthetic-generation recipe (configs/data/synth-*.yaml), shared by YAML, CLI and HTTP."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from studio.data.curate import DedupeStep, Step
from studio.jobs.results import JobResult
from studio.recipes import Spec

MODES = ("qa", "cot", "summary")


class SynthSpec(Spec):
    """Documents → token-bounded chunks → generator calls through the gateway → parsed rows →
    curation → a new prompt/completion snapshot with lineage to the source and the generator."""

    source: str = Field(description="Snapshot of document or text rows: name, name@N or id.")
    name: str = Field(description="Dataset name of the generated snapshot.")
    mode: Literal["qa", "cot", "summary"] = Field(
        default="qa", description="qa: question/answer pairs; cot: question, reasoning then answer; "
        "summary: a summary of each chunk.")
    model: str = Field(description="Generator model group at the gateway (e.g. 'tiny', "
                       "'openai/gpt-4o-mini').")
    tokenizer: str | None = Field(default=None, description="Local model folder whose tokenizer "
                                  "bounds chunks; null: whitespace words.")
    chunk_tokens: int = Field(default=512, ge=16, le=32768, description="Most tokens per chunk.")
    overlap_tokens: int = Field(default=64, ge=0, description="Tokens shared by neighbouring chunks.")
    pairs_per_chunk: int = Field(default=3, ge=1, le=50, description="QA / CoT pairs asked per chunk.")
    max_chunks: int | None = Field(default=None, ge=1, description="Stop after this many chunks.")
    max_concurrency: int = Field(default=4, ge=1, le=256, description="Generator calls in flight.")
    temperature: float = Field(default=0.7, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(default=512, ge=1, description="Most tokens per generator reply.")
    structured: bool = Field(
        default=True, description="Send the reply's JSON schema as `response_format` (json_schema), "
        "so engines with guided decoding (vLLM, OpenAI) answer in the asked-for structure; the "
        "reply is parsed leniently either way. Turn off for providers that refuse it.")
    max_field_chars: int | None = Field(
        default=None, ge=1, description="With structured: longest string per field (maxLength "
        "in the schema) — keeps a weak model's guided reply within max_tokens.")
    chunk_retries: int = Field(default=2, ge=0, le=10, description="Retries of a failed call of a "
                               "chunk (after the gateway client's own) before the run stops.")
    curate: list[Step] = Field(
        default_factory=lambda: [DedupeStep(type="dedupe", near_threshold=0.9)],
        description="Curation steps applied to the generated rows (default: dedupe).")

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> SynthSpec:
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"overlap_tokens ({self.overlap_tokens}) must be below chunk_tokens "
                             f"({self.chunk_tokens})")
        return self


class SynthResult(JobResult):
    """A synthesis job's ``result``: its progress while it runs, the snapshot it wrote once done."""

    progress: dict[str, Any] | None = Field(default=None, description="chunks_done, chunks_total, rows, ...")
    snapshot_id: str | None = None
    name: str | None = Field(default=None, description="The generated dataset.")
    version: int | None = None
    rows: int | None = None
    dropped: int | None = None
