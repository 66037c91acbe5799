"""Cosine similarity of output and reference with a local sentence-embedding model.

Optional: sentence-transformers is not a studio dependency. When it (or the model) is missing the
scorer reports every datapoint ``skipped`` with the reason, and the run goes on."""

from __future__ import annotations

import asyncio
import threading

from studio.evals.scorers.base import Datapoint, ScoreResult
from studio.scorer_specs import EmbeddingScorer, register


class Embedding:
    def __init__(self, spec: EmbeddingScorer):
        self.spec = spec
        self._model = None
        self._lock = threading.Lock()
        self.skip_reason = self._probe()

    def _probe(self) -> str | None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            return ("embedding scorer skipped: sentence-transformers is not installed "
                    "(pip install sentence-transformers, and put the model on local disk)")
        try:
            self._model = SentenceTransformer(self.spec.model, local_files_only=True)
        except Exception as e:  # noqa: BLE001 - any load failure means "no model here", said once
            return f"embedding scorer skipped: model {self.spec.model!r} is not available locally ({str(e)[:160]})"
        return None

    def _similarity(self, a: str, b: str) -> float:
        with self._lock:  # one model, several threads: encode one pair at a time
            emb = self._model.encode([a, b], normalize_embeddings=True)
        return float(max(0.0, min(1.0, (emb[0] * emb[1]).sum())))

    async def score(self, dp: Datapoint, output: str) -> ScoreResult:
        if self.skip_reason:
            return ScoreResult.unscored(self.skip_reason, status="skipped")
        sim = await asyncio.to_thread(self._similarity, output, dp.reference or "")
        return ScoreResult(sim, f"cosine {sim:.3f}")


register("embedding", lambda spec, client: Embedding(spec))
