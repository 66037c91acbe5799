"""The shadow phase's data: which served names mirror a share of their live requests to a loop's
candidate, and the judged pairs the runner's sign test counts (docs/loops.md, "Shadow").

While a generation is in ``SHADOW`` the Router marks a share (``shadow.share``) of the requests for
its served name that its champion answers (``shadowed_names``); the client that served one mirrors
the same request to the candidate after the caller's answer ended (never for requests with
``tools``; bounded, dropped when busy; ``deployments.router_client``) and the pair is stored
(``shadow_pairs``). The runner's pass judges the stored pairs (``judge_pairs``) with the eval's
pairwise judge (``studio.evals.scorers.judge``: asked in both orders, a verdict that flips with the
order is a tie) on the recipe's ``shadow.judge`` model, through the gateway with the loop owner's
key (an API-created loop; a CLI-created one has no owner key and spends on the operator's admin key,
as its jobs do), and ``pair_counts`` gives the sign test its wins and losses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from studio.access import principal_id
from studio.gateway import GatewayError
from studio.keys import Role
from studio.loops.spec import LoopSpec
from studio.loops.states import State
from studio.scorer_specs import JudgeScorer
from studio.store.log_models import ShadowPair
from studio.store.loop_models import Loop, LoopGeneration
from studio.store.models import ApiKey

# The gateway's chat: (body, ctx) → (status, body, headers), as ``GatewayService.handle`` answers
# (the Gateway deployment's ``chat``; the JobScheduler hands in its handle's).
GatewayChat = Callable[[dict[str, Any], dict[str, Any]], Awaitable[tuple[int, dict[str, Any], dict[str, str]]]]
JUDGED_PER_PASS = 8  # pairs judged per runner pass (each asks the judge twice)
VERDICTS = {1.0: "win", 0.0: "loss", 0.5: "tie"}  # the pairwise judge's score for the candidate


def shadowed_names(session: Session) -> dict[str, dict[str, Any]]:
    """Served name → ``{generation_id, champion, candidate, share}`` of each generation in SHADOW."""
    rows = session.execute(
        select(LoopGeneration.id, LoopGeneration.champion, LoopGeneration.candidate, LoopGeneration.config,
               Loop.served_name)
        .join(Loop, Loop.id == LoopGeneration.loop_id)
        .where(LoopGeneration.state == State.SHADOW.value)).all()
    out = {}
    for r in rows:
        share = float(((r.config or {}).get("loop") or {}).get("shadow", {}).get("share") or 0.0)
        if r.champion and r.candidate and share > 0:
            out[r.served_name] = {"generation_id": r.id, "champion": r.champion, "candidate": r.candidate,
                                  "share": share}
    return out


def pair_counts(session: Session, gen: LoopGeneration) -> tuple[int, int] | None:
    """(wins, losses) of the candidate's judged pairs; None while no pair was mirrored yet."""
    counts = dict(session.execute(
        select(ShadowPair.verdict, func.count()).where(ShadowPair.generation_id == gen.id)
        .group_by(ShadowPair.verdict)).all())
    if not counts:
        return None
    return counts.get("win", 0), counts.get("loss", 0)


class GatewayJudgeClient:
    """What the eval's judge calls (``achat``), over the gateway's in-cluster chat with a fixed
    caller: the usage, limits and budget are the calling key's."""

    def __init__(self, chat: GatewayChat, ctx: dict[str, Any]):
        self.chat = chat
        self.ctx = ctx

    async def achat(self, model: str, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        status, body, _ = await self.chat({"model": model, "messages": messages, **params}, self.ctx)
        if status != 200:
            message = ((body or {}).get("error") or {}).get("message") or str(body)[:300]
            raise GatewayError(f"gateway answered {status}: {message}", status=status, body=body)
        return body


def owner_context(session: Session, loop: Loop, gen: LoopGeneration) -> dict[str, Any]:
    """The gateway's caller context for the loop's judge calls: the loop owner's key, else (a loop
    created from the CLI) the operator's oldest live admin key."""
    key = session.get(ApiKey, loop.owner_key_id) if loop.owner_key_id is not None else None
    if key is None:
        key = session.scalars(select(ApiKey).where(ApiKey.role == Role.admin.value, ApiKey.revoked_at.is_(None))
                              .order_by(ApiKey.id).limit(1)).first()
    ctx: dict[str, Any] = {"service": "loop", "job_id": f"loop:{loop.name}:g{gen.number}:shadow"[:64]}
    if key is not None:
        ctx.update(key_id=key.id, key_name=key.name, rpm=key.rpm_limit, tpm=key.tpm_limit,
                   budget_usd=key.budget_usd, principal_id=principal_id(key))
    return ctx


def judge_pairs(session: Session, gen: LoopGeneration, chat: GatewayChat, now: datetime,
                limit: int = JUDGED_PER_PASS) -> int:
    """Judge up to ``limit`` of the generation's unjudged pairs, oldest first; how many got a
    verdict. A gateway failure leaves the pair unjudged (the next pass asks again); a reply the
    judge's parser cannot read is stored ``unscored`` with it."""
    from studio.evals.scorers.base import Datapoint
    from studio.evals.scorers.judge import Judge

    pending = list(session.scalars(select(ShadowPair).where(ShadowPair.generation_id == gen.id,
                                                            ShadowPair.verdict.is_(None))
                                   .order_by(ShadowPair.created_at, ShadowPair.id).limit(limit)))
    if not pending:
        return 0
    spec = LoopSpec.model_validate(gen.config["loop"])
    loop = session.get(Loop, gen.loop_id)
    judge = Judge(JudgeScorer(type="judge", model=spec.shadow.judge, mode="pairwise"),
                  GatewayJudgeClient(chat, owner_context(session, loop, gen)))

    async def run():
        return await asyncio.gather(*(
            judge.compare(Datapoint(index=i, messages=[{"role": "user", "content": p.prompt_text}]),
                          p.candidate_response, p.champion_response) for i, p in enumerate(pending)))

    judged = 0
    for pair, result in zip(pending, asyncio.run(run()), strict=True):
        if result.status == "error":  # the gateway failed: asked again next pass
            continue
        pair.verdict = VERDICTS.get(result.score, "unscored") if result.score is not None else "unscored"
        pair.judge_detail = f"{result.reason}\n{result.raw or ''}".strip()[:4000]
        pair.judged_at = now
        judged += 1
    session.flush()
    return judged
