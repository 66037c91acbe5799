"""What a job's ``result`` column holds, typed. Each kind's service owns its model (training:
``studio.train.spec.TrainResult``, evals: ``studio.evals.spec.EvalResult``, synthesis:
``studio.data.synth.spec.SynthResult``); they share ``JobResult``: the failure an entrypoint
recorded, and ``of(job)`` to read a row. Unknown keys are kept (``extra="allow"``): the column is
written by several parts over a job's life (entrypoint, scheduler, gate), and a reader of one part
must not drop another's."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field


class JobFailure(BaseModel):
    """Why the last attempt failed, as the entrypoint saw it."""

    model_config = ConfigDict(extra="allow")
    stage: str | None = Field(default=None, description="preflight, ray, train, ...")
    retryable: bool = Field(default=True, description="false: a retry cannot help (e.g. a preflight "
                            "refusal), so the scheduler does not retry")


class JobResult(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: JobFailure | None = None
    total_steps: int | None = Field(default=None, description="Steps the run takes, when its service "
                                    "knows (a training job: hyper.max_steps, or the trainer's own count once it "
                                    "starts); progress bars count to it.")
    epochs: float | None = Field(default=None, description="Epochs the run makes, when known (a training job "
                                 "records the trainer's count when it starts).")

    @classmethod
    def of(cls, job: Any) -> Self:
        """The ``result`` of ``job`` (a ``Job`` row) read as this model."""
        return cls.model_validate(job.result or {})

    def dump(self) -> dict[str, Any]:
        """For the column: what was set, unknown keys included."""
        return self.model_dump(mode="json", exclude_unset=True)
