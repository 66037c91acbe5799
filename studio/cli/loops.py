"""``studio loop``: self-driving improvement loops (docs/loops.md), on the database directly like
the other groups: create and manage loops, start a generation by hand (``run``, ``--follow`` prints
its timeline as the scheduler's runner moves it) and read what is stored (``explain`` recomputes
each stored verdict)."""

from __future__ import annotations

import json
import time

import typer
from rich.table import Table

from studio.cli.common import console, settings_with_db
from studio.store.db import session_scope

app = typer.Typer(help="Self-driving improvement loops: feedback → train → gate → canary → verdict.",
                  no_args_is_help=True)

ACTOR = "cli"  # the operator on the server (docs/security.md: the CLI acts as an admin)


@app.command("create")
def create(
    recipe: str = typer.Argument(..., help="A loop recipe, e.g. configs/loops/reverse_tiny.yaml."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. decision.alpha=0.01."),
) -> None:
    """Create a loop from its recipe (and its training recipe), checked against the registry: the
    served name needs a champion of the training recipe's base model."""
    from studio.loops.control import create_checked
    from studio.loops.spec import load_loop_recipe
    from studio.loops.views import loop_detail

    spec, train = load_loop_recipe(recipe, overrides or ())
    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        info = loop_detail(s, create_checked(s, spec, train, created_by=ACTOR, owner_key_id=None))
    console.print(f"[green]loop {info.name}[/] on {info.served_name}: trains {spec.train.recipe}, canary "
                  f"{' → '.join(f'{x:g} %' for x in spec.canary.steps)}, alpha {spec.decision.alpha:g}", highlight=False)
    console.print(f"its triggers start generations while the studio runs (`studio up`); by hand: "
                  f"studio loop run {info.name} --follow", highlight=False)


@app.command("ls")
def ls() -> None:
    """Loops with their status and active generation."""
    from studio.loops.repository import list_loops
    from studio.loops.views import loop_summary

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        rows = [loop_summary(s, lp) for lp in list_loops(s)]
    table = Table("loop", "served name", "status", "generations", "active", "rollbacks in a row")
    for r in rows:
        active = f"{r.active_generation.number}: {r.active_generation.state}" if r.active_generation else "-"
        table.add_row(r.name, r.served_name, r.status, str(r.generations), active, str(r.rollbacks_in_a_row))
    console.print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Loop name."),
         generation: int | None = typer.Option(None, "--generation", "-g", help="A generation's timeline."),
         as_json: bool = typer.Option(False, "--json", help="Print the JSON document."),
         follow: bool = typer.Option(False, "--follow", "-f", help="With -g: print the timeline as it grows, "
                                     "until the generation ends."),
         timeout_s: float = typer.Option(0.0, "--timeout-s", help="With --follow: stop after this many seconds.")
         ) -> None:
    """The loop and its recent generations, or one generation's transitions and looks."""
    if follow:
        if generation is None:
            raise typer.BadParameter("--follow needs a generation: -g N")
        follow_generation(name, generation, timeout_s)
        return
    from studio.loops.control import generation_by_number
    from studio.loops.repository import get_loop
    from studio.loops.views import generation_detail, loop_detail

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        loop = get_loop(s, name)
        doc = (generation_detail(s, loop, generation_by_number(s, loop, generation)) if generation is not None
               else loop_detail(s, loop))
    if as_json:
        console.print_json(doc.model_dump_json())
        return
    if generation is None:
        console.print(f"[bold]{doc.name}[/] on {doc.served_name} · {doc.status}"
                      + (f" ({doc.status_reason})" if doc.status_reason else "")
                      + f" · {doc.rollbacks_in_a_row} rollbacks in a row", highlight=False)
        table = Table("generation", "state", "attempt", "canary step", "candidate", "started", "ended")
        for g in doc.recent_generations:
            table.add_row(str(g.number), g.state, str(g.attempt), str(g.canary_step), g.candidate or "-",
                          g.created_at[:19], (g.ended_at or "-")[:19])
        console.print(table)
        return
    console.print(f"[bold]{doc.loop}[/] generation {doc.number} · {doc.state}", highlight=False)
    table = Table("at", "from", "to", "reason", "actor", "detail")
    for t in doc.transitions:
        table.add_row(t.at[:19], t.from_state or "-", t.to_state, t.reason, t.actor, t.detail)
    console.print(table)
    console.print(f"{len(doc.looks)} looks (studio loop explain {doc.loop} -g {doc.number})", highlight=False)


def _act(verb: str, name: str, reason: str) -> None:
    from studio.loops import control
    from studio.loops.views import loop_summary

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        loop = getattr(control, f"{verb}_loop")(s, name, actor=ACTOR, reason=reason)
        info = loop_summary(s, loop)
    active = info.active_generation
    console.print(f"loop [bold]{info.name}[/]: {info.status}"
                  + (f"; generation {active.number} {active.state}" if active else ""), highlight=False)


@app.command("pause")
def pause(name: str = typer.Argument(..., help="Loop name."),
          reason: str = typer.Option("", "--reason", help="Recorded with the transition.")) -> None:
    """No new generation starts; the active one is held (PAUSED) where it is."""
    _act("pause", name, reason)


@app.command("resume")
def resume(name: str = typer.Argument(..., help="Loop name."),
           reason: str = typer.Option("", "--reason", help="Recorded with the transition.")) -> None:
    """Active again (the rollback count starts over); a held generation goes back to where it paused."""
    _act("resume", name, reason)


@app.command("cancel")
def cancel(name: str = typer.Argument(..., help="Loop name."),
           reason: str = typer.Option("", "--reason", help="Recorded with the transition.")) -> None:
    """No new generation starts; the active one is cancelled (through ROLLING_BACK if it holds traffic)."""
    _act("cancel", name, reason)


@app.command("delete")
def delete(name: str = typer.Argument(..., help="Loop name."),
           yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")) -> None:
    """Remove a loop and its history (generations, transitions, looks, shadow pairs), so its name and
    served name are free again; versions, jobs, snapshots and feedback stay. Refused while a
    generation is active: `studio loop cancel NAME` first."""
    from studio.loops.control import delete_loop, deletion_preview

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        plan = deletion_preview(s, name)  # 404 / 409 before asking
    if not yes:
        typer.confirm(f"delete loop {plan.name} on {plan.served_name} with its {plan.generations} generations "
                      f"({plan.transitions} transitions, {plan.looks} looks, {plan.shadow_pairs} shadow pairs)? "
                      f"{plan.kept} stay", abort=True)
    with session_scope(settings.db_url) as s:
        done = delete_loop(s, name, actor=ACTOR)
    console.print(f"deleted loop [bold]{done.name}[/]: {done.generations} generations, {done.transitions} "
                  f"transitions, {done.looks} looks, {done.shadow_pairs} shadow pairs; {done.served_name} is free "
                  f"for a new loop ({done.kept} stay)", highlight=False)


@app.command("run")
def run(name: str = typer.Argument(..., help="Loop name."),
        reason: str = typer.Option("", "--reason", help="Recorded with the trigger."),
        follow: bool = typer.Option(False, "--follow", "-f", help="Print the timeline until the generation ends."),
        timeout_s: float = typer.Option(0.0, "--timeout-s", help="With --follow: stop following after this "
                                        "many seconds (0: until it ends).")) -> None:
    """Start a generation by hand (TRIGGERED now); the scheduler's runner in the running studio moves
    it on: snapshot, training, gate, canary, verdict."""
    from studio.loops.control import run_loop

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        gen = run_loop(s, name, actor=ACTOR, reason=reason)
        number = gen.number
    console.print(f"loop [bold]{name}[/]: generation {number} TRIGGERED", highlight=False)
    if not follow:
        console.print(f"follow it: studio loop show {name} -g {number}", highlight=False)
        return
    follow_generation(name, number, timeout_s)


def follow_generation(name: str, number: int, timeout_s: float = 0.0, every_s: float = 2.0) -> str:
    """Print a generation's transitions and looks as they are stored, until it ends (its state);
    exit 3 when it is PAUSED (a person must act), exit 2 when ``timeout_s`` passes first."""
    from studio.loops.control import generation_by_number
    from studio.loops.repository import get_loop
    from studio.loops.states import State
    from studio.loops.views import generation_detail

    settings = settings_with_db()
    seen_moves = seen_looks = 0
    started = time.monotonic()
    while True:
        with session_scope(settings.db_url) as s:
            loop = get_loop(s, name)
            doc = generation_detail(s, loop, generation_by_number(s, loop, number))
        for t in doc.transitions[seen_moves:]:
            console.print(f"{t.at[11:19]}  {t.from_state or '-':>12} → {t.to_state:<12} {t.reason:<16} {t.detail}",
                          highlight=False, soft_wrap=True)
        for x in doc.looks[seen_looks:]:
            bounds = f" [{x.lower:+.3f}, {x.upper:+.3f}]" if x.lower is not None else ""
            console.print(f"{x.at[11:19]}  look: step {x.step} at {x.weight:.0%}, {x.action}{bounds}: "
                          f"{x.verdict.get('detail', '')}", highlight=False, soft_wrap=True)
        seen_moves, seen_looks = len(doc.transitions), len(doc.looks)
        if State(doc.state).is_terminal():
            console.print(f"[bold]generation {number}: {doc.state}[/]", highlight=False)
            return doc.state
        if doc.state == State.PAUSED.value:  # held until a person acts: following on would wait forever
            console.print(f"generation {number} is PAUSED ({doc.transitions[-1].reason}); look at it, then "
                          f"`studio loop resume {name}` (or cancel it)", style="yellow", highlight=False)
            raise typer.Exit(3)
        if timeout_s and time.monotonic() - started >= timeout_s:
            console.print(f"generation {number} is still {doc.state} after {timeout_s:g} s (the scheduler's runner "
                          f"moves it while `studio up` runs); follow again: studio loop show {name} -g {number}",
                          style="yellow", highlight=False)
            raise typer.Exit(2)
        time.sleep(every_s if not timeout_s else max(0.0, min(every_s, timeout_s - (time.monotonic() - started))))


@app.command("simulate")
def simulate(
    target: str = typer.Argument(..., help="A loop's name (its served name is asked), a served name or an "
                                 "experiment alias."),
    dataset: str = typer.Option(..., "--dataset", help="Prompts and reference answers, e.g. reverse-train "
                                "(not the gate's golden set: feedback on its prompts is never trained on)."),
    rate: float = typer.Option(0.3, "--rate", help="Share of answers rated thumbs up or down."),
    p_up_correct: float = typer.Option(0.85, "--p-up-correct", help="P(thumbs up | right answer)."),
    p_up_wrong: float = typer.Option(0.15, "--p-up-wrong", help="P(thumbs up | wrong answer)."),
    scorer: str = typer.Option("exact_match", "--scorer", help="A programmatic scorer: its type "
                               "(exact_match) or its JSON ('{\"type\": \"regex\", \"pattern\": \"^9\"}')."),
    limit: int | None = typer.Option(None, "--limit", help="Only the dataset's first N rows (prompts repeat, "
                                     "so two versions' answers to one prompt pair up as DPO data)."),
    users: int = typer.Option(100, "--users", help="Simulated users (the `user` of each request)."),
    requests: int | None = typer.Option(None, "--requests", help="Stop after this many requests."),
    until_verdict: bool = typer.Option(False, "--until-verdict", help="Follow the loop's active (or next) "
                                       "generation and stop when it ends."),
    concurrency: int = typer.Option(4, "--concurrency", help="Requests in flight at once."),
    seed: int = typer.Option(0, "--seed", help="Seeds prompts, users and ratings: a rerun is the same."),
    max_tokens: int = typer.Option(32, "--max-tokens", help="max_tokens of each request."),
    temperature: float = typer.Option(0.0, "--temperature", help="temperature of each request."),
    timeout_s: float = typer.Option(0.0, "--timeout-s", help="Stop after this many seconds (0: no limit)."),
) -> None:
    """Simulated users: send a dataset's prompts to a served name through /v1 (one `user` each),
    score each answer and rate a share of them on /v1/feedback, so a loop runs without real users."""
    from studio.gateway.client import resolve_api_key
    from studio.loops.simulate import SimulateSpec, follow_generation, run_users

    if requests is None and not until_verdict:
        raise typer.BadParameter("say when to stop: --requests N, --until-verdict, or both")
    scorer_spec = json.loads(scorer) if scorer.lstrip().startswith("{") else {"type": scorer}
    settings = settings_with_db()
    watch = None
    with session_scope(settings.db_url) as s:
        served = _served_name(s, target, until_verdict)
        if until_verdict:
            watch = follow_generation(s, settings.db_url, target, on_state=lambda n, st: console.print(
                f"generation {n}: {st}", highlight=False))
    spec = SimulateSpec(target=served, dataset=dataset, rate=rate, p_up_correct=p_up_correct, p_up_wrong=p_up_wrong,
                        scorer=scorer_spec, limit=limit, users=users, requests=requests, concurrency=concurrency, seed=seed,
                        max_tokens=max_tokens, temperature=temperature)
    console.print(f"simulating {users} users of {served} on {settings.base_url}/v1: {dataset}'s prompts, "
                  f"{rate:.0%} rated, P(up | right) {p_up_correct:g}, P(up | wrong) {p_up_wrong:g}, seed {seed}",
                  highlight=False)
    totals = run_users(settings, spec, api_key=resolve_api_key(), traffic=watch, timeout_s=timeout_s,
                       on_progress=lambda t: console.print(t.line(), highlight=False))
    console.print(f"[bold]done[/] ({totals.stopped}): {totals.line().strip()}", highlight=False)
    if watch is not None and watch.last is not None:
        console.print(f"loop generation {watch.last[0]}: {watch.last[1]} "
                      f"(studio loop show {watch.loop_name} -g {watch.last[0]})", highlight=False)
    if totals.stopped.startswith("timeout") and until_verdict:
        raise typer.Exit(2)


def _served_name(session, target: str, need_loop: bool) -> str:
    """What the users ask for: a loop's served name when ``target`` names a loop (with
    ``need_loop``: also the loop on served name ``target``), else ``target`` itself."""
    from studio.errors import NotFound
    from studio.loops.repository import get_loop
    from studio.loops.simulate import find_loop

    if need_loop:
        return find_loop(session, target).served_name
    try:
        return get_loop(session, target).served_name
    except NotFound:
        return target


@app.command("explain")
def explain(name: str = typer.Argument(..., help="Loop name."),
            generation: int | None = typer.Option(None, "--generation", "-g", help="Default: the newest."),
            as_json: bool = typer.Option(False, "--json", help="Print the JSON document.")) -> None:
    """Each stored look's verdict recomputed from its counts under the generation's frozen rule."""
    from sqlalchemy import func, select

    from studio.errors import NotFound
    from studio.loops.control import generation_by_number
    from studio.loops.repository import explain as explain_generation
    from studio.loops.repository import get_loop
    from studio.loops.views import explained_view
    from studio.store.loop_models import LoopGeneration

    settings = settings_with_db()
    with session_scope(settings.db_url) as s:
        loop = get_loop(s, name)
        number = generation if generation is not None else s.scalar(
            select(func.max(LoopGeneration.number)).where(LoopGeneration.loop_id == loop.id))
        if number is None:
            raise NotFound(f"loop {name} has no generation yet", "nothing to explain until one has run")
        gen = generation_by_number(s, loop, number)
        doc = explained_view(loop, gen, explain_generation(s, gen.id))
    if as_json:
        console.print_json(json.dumps(doc.model_dump()))
        return
    console.print(f"[bold]{doc.loop}[/] generation {doc.number} · {doc.state} · "
                  + ("every stored verdict recomputes the same" if doc.all_agree else
                     "[red]some stored verdicts differ from the recomputed ones[/]"), highlight=False)
    table = Table("look", "at s", "step", "weight", "estimate", "bounds", "stored", "recomputed", "why")
    for x in doc.looks:
        bounds = f"[{x.lower:+.3f}, {x.upper:+.3f}]" if x.lower is not None else "-"
        table.add_row(str(x.look_id), f"{x.at_s:g}", str(x.step), f"{x.weight:g}",
                      "-" if x.estimate is None else f"{x.estimate:+.3f}", bounds, x.stored_action,
                      x.recomputed_action if x.agrees else f"[red]{x.recomputed_action}[/]", x.detail)
    console.print(table)
