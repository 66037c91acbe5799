"""The demo's last step: one generation of the shipped self-driving loop (configs/loops/reverse_tiny.yaml)
on the state the demo leaves, through public interfaces — the loop created and triggered over
``/api/loops``, simulated users (``studio.loops.simulate``, what ``studio loop simulate`` runs) on
``/v1`` and ``/v1/feedback`` until the generation ends, its timeline and verdict from
``GET /api/loops/{name}/generations/{n}``. The parts are separate functions so the slow e2e tests
(tests/loops/test_loop_e2e.py) run the same ones with a ``studio down`` / ``studio up`` between them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

from studio.cli.common import console
from studio.cli.demo.profile import CONFIGS, DemoError
from studio.settings import StudioSettings

LOOP_RECIPE = CONFIGS / "loops" / "reverse_tiny.yaml"
USERS_DATASET = "reverse-train"  # the users' prompts: not the gate's golden set (reverse-test), never trained on
ENDED = ("PROMOTED", "ROLLED_BACK", "REFUSED")  # the verdicts; FAILED and CANCELLED are not one


def _call(api: httpx.Client, method: str, path: str, expect: tuple[int, ...] = (200, 201), **kw) -> Any:
    r = api.request(method, path, **kw)
    if r.status_code not in expect:
        raise DemoError(f"{method} {path} answered {r.status_code}: {r.text[:400]}", "see the message")
    return r.json()


def create_loop(api: httpx.Client, settings: StudioSettings, recipe: Path = LOOP_RECIPE,
                overrides: tuple[str, ...] = ()) -> str:
    """``POST /api/loops`` with the loop recipe and its training recipe (as ``studio loop create``
    sends them; ``${STUDIO_HOME}`` is this studio's home); an existing loop of that name gets the
    recipe with ``PUT``. The loop's name."""
    from studio.loops.spec import LoopSpec, resolve_train_recipe
    from studio.recipes import load_recipe
    from studio.train.spec import TrainSpec

    spec = load_recipe(recipe, LoopSpec, list(overrides))
    train = load_recipe(resolve_train_recipe(spec, recipe), TrainSpec, spec.train.overrides, home=settings.home_abs)
    body = {"loop": spec.model_dump(mode="json"), "train": train.model_dump(mode="json", by_alias=True)}
    exists = api.get(f"/api/loops/{spec.name}").status_code == 200
    _call(api, "PUT" if exists else "POST", f"/api/loops/{spec.name}" if exists else "/api/loops", json=body)
    console.print(f"  loop {spec.name} on {spec.served_name}: {train.method.upper()} ({', '.join(spec.train.overrides)}), gate "
                  f"{(spec.gate.scorer or {}).get('type', '-')} on {spec.gate.dataset}, canary "
                  f"{' → '.join(f'{x:g} %' for x in spec.canary.steps)}, alpha {spec.decision.alpha:g}, "
                  f"≥ {spec.decision.min_rated_per_arm} rated per arm", highlight=False)
    return spec.name


def trigger(api: httpx.Client, name: str, reason: str = "the demo's last step") -> int:
    """``POST /api/loops/{name}/trigger``: a generation TRIGGERED now; its number. When the loop's
    own trigger (enough new ratings) started one first (409), that one."""
    r = api.post(f"/api/loops/{name}/trigger", json={"reason": reason})
    if r.status_code == 409:
        active = _call(api, "GET", f"/api/loops/{name}").get("active_generation")
        if active:
            console.print(f"  generation {active['number']} was started by the loop's own trigger "
                          f"({active['state']})", highlight=False)
            return active["number"]
    if r.status_code not in (200, 201):
        raise DemoError(f"POST /api/loops/{name}/trigger answered {r.status_code}: {r.text[:400]}", "see the message")
    gen = r.json()
    console.print(f"  generation {gen['number']} TRIGGERED (champion {gen['champion']}); the scheduler's "
                  "runner moves it: snapshot → training → gate → canary → verdict", highlight=False)
    return gen["number"]


def users_until_verdict(settings: StudioSettings, api_key: str, name: str, number: int, *, rate: float = 0.5,
                        seed: int = 0, timeout_s: float = 600.0, users: int = 100, concurrency: int = 4,
                        dataset: str = USERS_DATASET):
    """Simulated users of the loop's served name until generation ``number`` ends (they wait while
    it trains and passes the gate); their totals (``studio.loops.simulate.Totals``)."""
    from studio.loops.simulate import GenerationWatch, SimulateSpec, run_users
    from studio.store.db import session_scope
    from studio.loops.repository import get_loop

    with session_scope(settings.db_url) as s:
        served = get_loop(s, name).served_name
    watch = GenerationWatch(settings.db_url, name, number=number, on_state=lambda n, st: console.print(
        f"  generation {n}: {st}", highlight=False))
    spec = SimulateSpec(target=served, dataset=dataset, rate=rate, users=users, concurrency=concurrency, seed=seed)
    console.print(f"  {users} simulated users on {served} ({dataset}'s prompts, {rate:.0%} rated: thumbs up with "
                  f"P {spec.p_up_correct:g} when exact match says right, {spec.p_up_wrong:g} when wrong)",
                  highlight=False)
    totals = run_users(settings, spec, api_key=api_key, traffic=watch, timeout_s=timeout_s, progress_every_s=10.0,
                       on_progress=lambda t: console.print("  " + t.line(), highlight=False))
    console.print("  users: " + totals.line().strip(), highlight=False)
    return totals


def timeline(api: httpx.Client, name: str, number: int) -> dict[str, Any]:
    """Print generation ``number``'s transitions, looks and verdict; the generation's document."""
    doc = _call(api, "GET", f"/api/loops/{name}/generations/{number}")
    t = Table("at", "from", "to", "reason", "detail", title=f"{name} generation {number}", title_justify="left")
    for x in doc["transitions"]:
        t.add_row(x["at"][11:19], x["from_state"] or "-", x["to_state"], x["reason"], x["detail"])
    console.print(t)
    for look in doc["looks"]:
        bounds = f"[{look['lower']:+.3f}, {look['upper']:+.3f}]" if look["lower"] is not None else "-"
        console.print(f"  look {look['at'][11:19]}: step {look['step']} at {look['weight']:.0%}, {look['action']} "
                      f"{bounds}: {look['verdict'].get('detail', '')}", highlight=False)
    return doc


def verdict(doc: dict[str, Any]) -> str:
    """The generation's end and why, in one line: the detail of the move that decided it."""
    deciding = [x for x in doc["transitions"] if x["to_state"] in ("REFUSED", "PROMOTING", "ROLLING_BACK",
                                                                    "FAILED", "CANCELLED")]
    why = deciding[-1]["detail"] if deciding else ""
    return f"{doc['state']}: {why}"


def run_generation(api: httpx.Client, settings: StudioSettings, api_key: str, *, overrides: tuple[str, ...] = (),
                   rate: float = 0.5, seed: int = 0, timeout_s: float = 600.0) -> dict[str, Any]:
    """The whole step: create the shipped loop, trigger one generation, users until it ends, its
    timeline. Raises ``DemoError`` unless it ends PROMOTED, ROLLED_BACK or REFUSED."""
    name = create_loop(api, settings, overrides=overrides)
    number = trigger(api, name)
    t0 = time.monotonic()
    totals = users_until_verdict(settings, api_key, name, number, rate=rate, seed=seed, timeout_s=timeout_s)
    doc = timeline(api, name, number)
    said = verdict(doc)
    console.print(f"  [bold]{said}[/]", highlight=False)
    if doc["state"] not in ENDED:
        raise DemoError(f"loop {name} generation {number} ended {doc['state']} after {time.monotonic() - t0:.0f} s, "
                        "not with a verdict", f"studio loop show {name} -g {number}; studio jobs ls")
    return {"loop": name, "generation": number, "state": doc["state"], "verdict": said,
            "candidate": doc.get("candidate"), "champion": doc.get("champion"), "users": totals.as_dict(),
            "transitions": [(x["from_state"], x["to_state"], x["reason"]) for x in doc["transitions"]],
            "looks": len(doc["looks"])}
