"""Simulated users (``studio loop simulate``, docs/loops.md "Simulated users"): they send a dataset's
prompts to a served name (or an experiment alias) through ``/v1`` with the official ``openai``
client, one ``user`` per simulated user (so a canary's split stays sticky per user), score each
answer with an eval scorer against the row's reference, and rate a share of them on
``/v1/feedback``: thumbs up with probability ``p_up_correct`` when the scorer says the answer is
right, ``p_up_wrong`` when it is wrong. The whole loop then runs on one machine with no real users.

Seeded: request *i*'s prompt, user, whether it is rated and the draw that decides up or down come
from ``(seed, i)`` alone, so two runs against the same answers send and rate the same way whatever
the concurrency. ``traffic`` (a function the caller hands in) says at most every second whether to
send, wait or stop; ``follow_generation`` is the one ``--until-verdict`` uses: traffic flows while
no generation of the loop is active (its data trigger may fire) and while the generation it follows
holds a shadow or canary, waits while it snapshots, trains and passes the gate (on a 2-core machine
the users would only slow those down), and stops when that generation ends.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator
from sqlalchemy import func, select

from studio.errors import NotFound, StudioError
from studio.recipes import Spec

Traffic = Literal["send", "wait", "stop"]


class SimulateSpec(Spec):
    """What the simulated users do (the options of ``studio loop simulate``)."""

    target: str = Field(min_length=1, description="The served name or experiment alias the users ask (/v1 model).")
    dataset: str = Field(min_length=1, description="Dataset whose prompts they send and whose references score "
                         "the answers (not the gate's golden set: its prompts are never trained on).")
    rate: float = Field(default=0.3, ge=0.0, le=1.0, description="Share of answers that get a thumbs up or down.")
    p_up_correct: float = Field(default=0.85, ge=0.0, le=1.0, description="P(thumbs up | the scorer says right).")
    p_up_wrong: float = Field(default=0.15, ge=0.0, le=1.0, description="P(thumbs up | the scorer says wrong).")
    scorer: dict[str, Any] = Field(default_factory=lambda: {"type": "exact_match"},
                                   description="An eval scorer that needs no model (exact_match, regex, json, "
                                   "numeric); an answer is right when it scores ≥ 0.5.")
    limit: int | None = Field(default=None, ge=1, description="Use only the dataset's first this many rows (a "
                              "small pool repeats prompts, so answers of two versions to one prompt pair up).")
    users: int = Field(default=100, ge=1, description="Simulated users; each request is one user's.")
    requests: int | None = Field(default=None, ge=1, description="Stop after this many requests.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Requests in flight at once.")
    seed: int = Field(default=0, description="Seeds prompts, users, which answers are rated and how.")
    max_tokens: int = Field(default=32, ge=1, description="max_tokens of each request.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0, description="temperature of each request.")

    @model_validator(mode="after")
    def _up_probabilities(self) -> SimulateSpec:
        if self.p_up_wrong > self.p_up_correct:
            raise ValueError(f"p_up_wrong ({self.p_up_wrong:g}) is above p_up_correct ({self.p_up_correct:g}): "
                             "simulated users would prefer wrong answers; swap them")
        return self


@dataclass
class Totals:
    """What the users did so far; ``by_version`` counts answers per registry version that served them."""

    sent: int = 0
    answered: int = 0
    errors: int = 0
    correct: int = 0
    rated: int = 0
    up: int = 0
    feedback_errors: int = 0
    by_version: dict[str, list[int]] = field(default_factory=dict)  # version → [answers, correct, rated, up]
    seconds: float = 0.0
    stopped: str = ""
    last_error: str = ""

    def line(self) -> str:
        """One progress line with the totals."""
        right = f"{self.correct / self.answered:.0%}" if self.answered else "-"
        versions = ", ".join(f"{v} {c[0]} ({c[3]}/{c[2]} up)" for v, c in sorted(self.by_version.items()))
        return (f"{self.seconds:5.0f} s  sent {self.sent}, answered {self.answered} ({right} right), "
                f"errors {self.errors}, rated {self.rated} (up {self.up}, down {self.rated - self.up})"
                + (f", feedback errors {self.feedback_errors}" if self.feedback_errors else "")
                + (f"  · {versions}" if versions else ""))

    def as_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered, "errors": self.errors, "correct": self.correct,
                "rated": self.rated, "up": self.up, "feedback_errors": self.feedback_errors,
                "by_version": {v: dict(zip(("answers", "correct", "rated", "up"), c))
                               for v, c in self.by_version.items()},
                "seconds": round(self.seconds, 1), "stopped": self.stopped}


@dataclass(frozen=True)
class Planned:
    """Request *i*'s plan, from ``(seed, i)`` alone."""

    row: int
    user: str
    rated: bool
    draw: float  # uniform in [0, 1): thumbs up when below the rule's probability


def plan(spec: SimulateSpec, rows: int, i: int) -> Planned:
    rng = random.Random(f"{spec.seed}:{i}")
    return Planned(row=rng.randrange(rows), user=f"sim-user-{rng.randrange(spec.users)}",
                   rated=rng.random() < spec.rate, draw=rng.random())


def thumbs_up(spec: SimulateSpec, correct: bool, p: Planned) -> bool:
    return p.draw < (spec.p_up_correct if correct else spec.p_up_wrong)


def load_prompts(session, spec: SimulateSpec) -> list:
    """The dataset's rows as eval datapoints (messages and reference); each must have a reference."""
    from studio.evals.data import load_datapoints
    from studio.evals.spec import EvalSpec
    from studio.recipes import validate_spec

    ev = validate_spec(EvalSpec, {"dataset": spec.dataset, "models": [spec.target], "scorers": [spec.scorer],
                                  "limit": spec.limit}, "simulate")
    _, points = load_datapoints(session, ev)
    points = [p for p in points if p.reference is not None]
    if not points:
        raise StudioError(f"dataset {spec.dataset} has no row with a reference answer to score against",
                          "use a prompt/completion or chat dataset (e.g. reverse-train)")
    return points


def build_scorer(spec: SimulateSpec):
    from studio.evals.scorers import build_scorers
    from studio.evals.spec import EvalSpec
    from studio.recipes import validate_spec

    ev = validate_spec(EvalSpec, {"dataset": spec.dataset, "models": [spec.target], "scorers": [spec.scorer]},
                       "simulate")
    if ev.scorers[0].type in ("judge", "embedding", "http"):
        raise StudioError(f"scorer {ev.scorers[0].type} calls a model or a service; simulated users score with a "
                          "programmatic scorer", "use exact_match, regex, json or numeric")
    return next(iter(build_scorers(ev).values()))


async def run(spec: SimulateSpec, points: list, *, base_url: str, api_key: str,
              traffic: Callable[[], Traffic] | None = None, on_progress: Callable[[Totals], None] | None = None,
              progress_every_s: float = 5.0, timeout_s: float = 0.0, check_every_s: float = 1.0) -> Totals:
    """Send, score and rate until ``spec.requests`` were sent, ``traffic()`` says stop, or
    ``timeout_s`` passed (0: no limit). Errors (the studio restarting, a refused request) are
    counted and the users carry on after a second's pause."""
    import httpx
    import openai

    scorer = build_scorer(spec)
    client = openai.AsyncOpenAI(base_url=f"{base_url.rstrip('/')}/v1", api_key=api_key, max_retries=0, timeout=120)
    http = httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    totals = Totals()
    started = time.monotonic()
    state: dict[str, Any] = {"next": 0, "mode": "send", "checked": 0.0, "printed": started}

    async def mode() -> Traffic:
        now = time.monotonic()
        if timeout_s and now - started >= timeout_s:
            totals.stopped = totals.stopped or f"timeout after {timeout_s:g} s"
            return "stop"
        if spec.requests is not None and state["next"] >= spec.requests:
            totals.stopped = totals.stopped or f"{spec.requests} requests sent"
            return "stop"
        if traffic is not None and now - state["checked"] >= check_every_s:
            state["checked"] = now
            state["mode"] = await asyncio.to_thread(traffic)
            if state["mode"] == "stop":
                totals.stopped = totals.stopped or "the generation ended"
        return state["mode"]

    def progress(force: bool = False) -> None:
        now = time.monotonic()
        totals.seconds = now - started
        if on_progress is not None and (force or now - state["printed"] >= progress_every_s):
            state["printed"] = now
            on_progress(totals)

    async def one(i: int) -> None:
        p = plan(spec, len(points), i)
        dp = points[p.row]
        totals.sent += 1
        try:
            raw = await client.chat.completions.with_raw_response.create(
                model=spec.target, messages=dp.messages, max_tokens=spec.max_tokens,
                temperature=spec.temperature, user=p.user)
            out = raw.parse()
        except (openai.APIError, httpx.HTTPError) as e:
            totals.errors += 1
            totals.last_error = f"{type(e).__name__}: {str(e)[:200]}"
            await asyncio.sleep(1.0)  # e.g. the studio restarting: users come back a little later
            return
        answer = out.choices[0].message.content or "" if out.choices else ""
        result = await scorer.score(dp, answer)
        correct = result.score is not None and result.score >= 0.5
        version = raw.headers.get("x-studio-model-version") or out.model or spec.target
        counts = totals.by_version.setdefault(version, [0, 0, 0, 0])
        totals.answered += 1
        counts[0] += 1
        if correct:
            totals.correct += 1
            counts[1] += 1
        if not p.rated:
            return
        up = thumbs_up(spec, correct, p)
        try:
            r = await http.post("/v1/feedback", json={"completion_id": out.id, "rating": 1 if up else -1})
            r.raise_for_status()
        except httpx.HTTPError as e:
            totals.feedback_errors += 1
            totals.last_error = f"feedback: {type(e).__name__}: {str(e)[:200]}"
            return
        totals.rated += 1
        counts[2] += 1
        if up:
            totals.up += 1
            counts[3] += 1

    async def worker() -> None:
        while True:
            m = await mode()
            if m == "stop":
                return
            if m == "wait":
                await asyncio.sleep(check_every_s / 2)
                continue
            i = state["next"]
            state["next"] += 1
            await one(i)
            progress()

    try:
        await asyncio.gather(*(worker() for _ in range(spec.concurrency)))
    finally:
        await client.close()
        await http.aclose()
    progress(force=True)
    return totals


def run_users(settings, spec: SimulateSpec, *, api_key: str, traffic: Callable[[], Traffic] | None = None,
              on_progress: Callable[[Totals], None] | None = None, timeout_s: float = 0.0,
              progress_every_s: float = 5.0) -> Totals:
    """``run`` on the studio of ``settings`` (its ``base_url``; the dataset read from its database),
    with ``api_key`` on /v1 and /v1/feedback."""
    from studio.store.db import session_scope

    with session_scope(settings.db_url) as s:
        points = load_prompts(s, spec)
    return asyncio.run(run(spec, points, base_url=settings.base_url, api_key=api_key, traffic=traffic,
                           on_progress=on_progress, timeout_s=timeout_s, progress_every_s=progress_every_s))


# --- --until-verdict: follow a loop's generation ------------------------------------------------


def find_loop(session, name: str):
    """The loop named ``name``, else the loop on served name ``name``."""
    from studio.loops.repository import get_loop
    from studio.store.loop_models import Loop

    try:
        return get_loop(session, name)
    except NotFound:
        loop = session.scalars(select(Loop).where(Loop.served_name == name)).first()
        if loop is None:
            raise NotFound(f"no loop is named {name!r} or serves it", "see `studio loop ls`") from None
        return loop


@dataclass
class GenerationWatch:
    """``traffic()`` for ``--until-verdict``: follows the loop's active generation, or the next one
    to start. ``last`` is the followed generation's (number, state) as last read."""

    db_url: str
    loop_name: str
    after: int = 0  # follow the first generation numbered above this, or the active one
    number: int | None = None
    last: tuple[int, str] | None = None
    on_state: Callable[[int, str], None] | None = None

    def __call__(self) -> Traffic:
        from studio.loops.states import State
        from studio.store.db import session_scope
        from studio.store.loop_models import Loop, LoopGeneration

        with session_scope(self.db_url) as s:
            loop = s.scalars(select(Loop).where(Loop.name == self.loop_name)).one()
            q = select(LoopGeneration).where(LoopGeneration.loop_id == loop.id)
            if self.number is not None:
                gen = s.scalars(q.where(LoopGeneration.number == self.number)).one()
            else:
                gen = s.scalars(q.where(LoopGeneration.number > self.after)
                                .order_by(LoopGeneration.number.desc()).limit(1)).first()
            if gen is None:
                return "send"  # no generation yet: the users' feedback is what may start one
            self.number = gen.number
            state = State(gen.state)
            if self.last != (gen.number, gen.state) and self.on_state is not None:
                self.on_state(gen.number, gen.state)
            self.last = (gen.number, gen.state)
            if state.is_terminal():
                return "stop"
            paused_in_traffic = state is State.PAUSED and gen.paused_from in (State.CANARY.value, State.SHADOW.value)
            return "send" if state in (State.WATCHING, State.SHADOW, State.CANARY) or paused_in_traffic else "wait"


def follow_generation(session, db_url: str, name: str, on_state=None) -> GenerationWatch:
    """The watch of loop ``name`` (or the loop on served name ``name``): its active generation,
    else the next one to start."""
    from studio.loops.repository import active_generation
    from studio.store.loop_models import LoopGeneration

    loop = find_loop(session, name)
    active = active_generation(session, loop)
    if active is not None:
        return GenerationWatch(db_url, loop.name, number=active.number, on_state=on_state)
    newest = session.scalar(select(func.max(LoopGeneration.number)).where(LoopGeneration.loop_id == loop.id))
    return GenerationWatch(db_url, loop.name, after=newest or 0, on_state=on_state)
