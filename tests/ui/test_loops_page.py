"""The Loops pages in a real browser against uvicorn on a real database (no Ray): a loop made
through the service layer with a refused generation and one in its canary with stored transitions
and looks. The page shows the timeline and the confidence-sequence chart (one mark per look, the
bounds, the verdicts as stored); its owner pauses and resumes it; a user who does not own it sees
no pause or cancel, a non-admin no promote; an admin must give a reason and then rolls back; an
owner deletes a loop with no active generation (Delete is hidden while one is)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from studio.loops import repository as repo
from studio.loops.spec import load_loop_recipe
from studio.loops.states import Reason, State
from studio.loops.stats import ArmCounts, Look, decide
from studio.store.db import session_scope
from tests.e2e.test_stack import REPO
from tests.ui.browser import api_server, chromium_page, screenshot_dir, ui_home

pytestmark = [pytest.mark.e2e, pytest.mark.parallel]  # no Ray: a uvicorn and a browser
SHIPPED = Path(REPO) / "configs" / "loops" / "reverse_tiny.yaml"
LOOP = "reverse-tiny-loop"
T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
TO_CANARY = ((State.WATCHING, State.TRIGGERED, Reason.TRIGGER_MANUAL), (State.TRIGGERED, State.SNAPSHOT, Reason.STEP_DONE),
             (State.SNAPSHOT, State.TRAINING, Reason.STEP_DONE), (State.TRAINING, State.GATE, Reason.STEP_DONE))


def _look(at_s, step, weight, champ, cand, assigned):
    """champ/cand: (completions, rated, thumbs_up)."""
    arm = lambda c, p95: ArmCounts(completions=c[0], rated=c[1], thumbs_up=c[2], latency_p95_ms=p95,  # noqa: E731
                                   tokens_per_answer=8)
    return Look(at_s=at_s, step=step, weight=weight, champion=arm(champ, 90), candidate=arm(cand, 95),
                step_assigned_champion=assigned[0], step_assigned_candidate=assigned[1], step_held_s=at_s)


def _make_loop(settings, owner_id: int) -> dict:
    """Generation 1 refused at the gate; generation 2 in its canary at step 2 with three looks."""
    spec, train = load_loop_recipe(SHIPPED)
    with session_scope(settings.db_url) as s:
        loop = repo.create_loop(s, spec, train=train.model_dump(mode="json"), created_by="user-1", owner_key_id=owner_id)
        config = repo.frozen_config(spec, loop.train)
        g1 = repo.start_generation(s, loop, config, actor="scheduler", champion="reverse-tiny@1", at=T0)
        for i, (frm, to, why) in enumerate(TO_CANARY, 1):
            repo.move(s, g1.id, frm, to, why, actor="scheduler", at=T0 + timedelta(minutes=i))
        repo.move(s, g1.id, State.GATE, State.REFUSED, Reason.GATE_REFUSED, actor="scheduler",
                  detail="exact_match 0.40 vs champion 0.55", at=T0 + timedelta(minutes=9))
        t1 = T0 + timedelta(hours=2)
        g2 = repo.start_generation(s, loop, config, actor="scheduler", champion="reverse-tiny@1", at=t1)
        for i, (frm, to, why) in enumerate(TO_CANARY, 1):
            repo.move(s, g2.id, frm, to, why, actor="scheduler", at=t1 + timedelta(minutes=i),
                      values={"candidate": "reverse-tiny@2"} if to is State.GATE else None)
        start = t1 + timedelta(minutes=10)
        repo.move(s, g2.id, State.GATE, State.CANARY, Reason.SHADOW_SKIPPED, actor="scheduler", at=start)
        looks = [_look(60, 0, 0.1, (40, 40, 20), (10, 10, 6), (36, 4)),
                 _look(300, 0, 0.1, (300, 200, 100), (70, 65, 45), (270, 30))]
        verdicts = []
        for look in looks:
            verdicts.append(decide(look, spec.decision))
            repo.record_look(s, g2.id, look, verdicts[-1], at=start + timedelta(seconds=look.at_s))
        repo.move(s, g2.id, State.CANARY, State.CANARY, Reason.CANARY_STEP, actor="scheduler",
                  detail="step 2: 25 %", at=start + timedelta(seconds=301))
        look = _look(900, 1, 0.25, (500, 330, 165), (150, 140, 98), (150, 50))
        verdicts.append(decide(look, spec.decision))
        repo.record_look(s, g2.id, look, verdicts[-1], at=start + timedelta(seconds=look.at_s))
        transitions = len(repo.transitions(s, g2.id))
    return {"actions": [v.action.value for v in verdicts], "bounded": sum(v.lower is not None for v in verdicts),
            "transitions": transitions}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ui = ui_home(tmp_path_factory, "ui-loops-home")
    home, settings, keys, owner = ui.home, ui.settings, ui.keys, ui.key_ids["user-1"]
    seeded = _make_loop(settings, owner)
    with api_server(home) as base:
        yield {"base": base, "keys": keys, "settings": settings, "owner": owner, **seeded}


@pytest.fixture(scope="module")
def shots():
    return screenshot_dir()


def _chart_marks(b) -> list[str]:
    return b.page.locator("#cs-chart g.look").evaluate_all("els => els.map(e => e.dataset.action)")


def test_the_owner_sees_the_timeline_and_the_chart_and_pauses_and_resumes(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user-1"])
        b.page.click("nav a:has-text('Loops')")
        b.wait(f"#loops-list a:text-is('{LOOP}')")
        row = b.page.locator("#loops-list tr", has_text=LOOP).inner_text()
        assert "reverse-tiny" in row and "#2" in row and "CANARY" in row  # the active generation
        assert "#1" in row and "REFUSED" in row  # the last verdict
        b.shot("loops-01-list")
        b.page.click(f"#loops-list a:text-is('{LOOP}')")
        b.wait("#gen-timeline li")
        assert "Generation 2" in b.page.inner_text("#gen-title")
        entries = b.page.locator("#gen-timeline li")
        assert entries.count() == server["transitions"]
        assert "canary_step · by scheduler" in entries.last.inner_text() and "step 2: 25 %" in entries.last.inner_text()
        assert "shadow_skipped" in b.page.inner_text("#gen-timeline")
        # The chart: one mark per stored look with its verdict as stored, an interval per look with
        # bounds, the band and both bound lines, zero (= −margin here) as a reference line.
        chart = b.page.locator("#cs-chart")
        assert chart.get_attribute("data-looks") == "3"
        assert _chart_marks(b) == server["actions"]
        assert b.page.locator("#cs-chart line.interval").count() == server["bounded"] >= 2
        assert b.page.locator("#cs-chart polygon.band, #cs-chart polyline.upper, #cs-chart polyline.lower").count() == 3
        assert b.page.locator("#cs-chart line.ref.zero").count() == 1
        weights = b.page.locator("#cs-chart text.weight-label").all_text_contents()  # SVG: no innerText
        assert weights == ["10 %", "25 %"]  # the weights in force, where they change
        assert "Every stored verdict recomputes the same" in b.page.inner_text("#cs-explain")
        assert b.page.locator("#gen-looks tbody tr").count() == 3
        assert "25 % → 50 %" in b.page.inner_text("#loop-recipe")  # the shipped loop's canary steps
        # ... and its gate's format guard (non-inferiority against the champion)
        assert "guards: format (regex) ≥ champion − 0" in b.page.inner_text("#loop-recipe")
        b.page.select_option("#cs-x", "rated")
        b.wait("#cs-chart[data-x='rated']")
        assert _chart_marks(b) == server["actions"]
        # Its owner holds it and lets it go on; an owner is not an admin: no promote.
        assert b.page.locator("#loop-owner-note, #gen-admin, #gen-promote").count() == 0
        assert b.page.locator("#loop-run").is_hidden()  # a generation is active
        assert b.page.locator("#loop-delete").is_hidden()  # so is deleting (the API would answer 409)
        b.page.fill("#loop-reason", "looking at the numbers")
        b.page.click("#loop-pause")
        b.wait("#gen-timeline li[data-to='PAUSED']")
        assert "hold · by user-1" in b.page.locator("#gen-timeline li").last.inner_text()
        assert "paused by user-1: looking at the numbers" in b.page.inner_text("#loop-status-reason")
        b.shot("loops-02-paused")
        b.page.click("#loop-resume")
        b.wait("#gen-timeline li:last-child[data-to='CANARY']:has-text('resume · by user-1')")
        b.shot("loops-03-loop")
        b.page.click("#loop-generations a:text-is('#1')")
        b.wait("#gen-timeline li[data-to='REFUSED']")
        assert "exact_match 0.40 vs champion 0.55" in b.page.inner_text("#gen-timeline")
        assert b.page.locator("#cs-chart").get_attribute("data-looks") == "0"
        b.shot("loops-04-refused")
        b.assert_clean()


def test_others_see_no_owner_buttons_and_an_admin_rolls_back_with_a_reason(server, shots):
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user-2"])
        b.goto(f"#/loops/{LOOP}")
        b.wait("#loop-owner-note")
        assert "only its owner or an admin can pause, resume, cancel, run or delete it" in b.page.inner_text("#loop-owner-note")
        assert b.page.locator("#loop-pause, #loop-cancel, #loop-resume, #loop-run, #loop-delete, #gen-promote, "
                              "#gen-admin").count() == 0
        # The chart comes with the generation, fetched after the loop (and its owner note).
        b.wait("#cs-chart g.look >> nth=2")
        assert b.page.locator("#cs-chart g.look").count() == 3  # the team reads it all
        b.shot("loops-05-other-user")
        b.page.click("#logout")
        b.login(server["keys"]["admin-1"])
        b.goto(f"#/loops/{LOOP}/2")
        b.wait("#gen-promote")
        b.wait("#loop-pause")  # an admin may do what the owner may (the loop's card renders on its own fetch)
        b.page.click("#gen-promote")  # no reason: said in words, nothing sent
        b.banner_says("Say why you promote generation 2")
        b.page.fill("#gen-reason", "users report wrong answers")
        b.page.click("#gen-rollback")
        b.wait("#gen-timeline li:last-child[data-to='ROLLING_BACK']")
        last = b.page.locator("#gen-timeline li").last.inner_text()
        assert "human_rollback · by admin-1" in last and "users report wrong answers" in last
        assert "Generation 2 is ROLLING_BACK." in b.banner()
        with b.expect_status(409):  # not allowed from ROLLING_BACK: the API's 409 in words
            b.page.click("#gen-promote")
            b.page.wait_for_function("document.getElementById('banner').textContent.includes('cannot go from')")
        assert "ROLLING_BACK to PROMOTING" in b.banner()
        b.shot("loops-06-admin")
        b.assert_clean()


def test_a_late_401_of_a_logged_out_session_does_not_log_out_the_next_key(server, shots):
    """A page whose user logged out can still have a request on its way, sent without a key; its
    401 coming back once the next key has logged in must not end that key's session (it did: the
    admin of the test above was sent to the login page mid-test, the banner it had just set gone)."""
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["admin-1"])
        held = []
        b.page.route("**/api/loops?late=1", lambda route: held.append(route))  # answered when released
        b.page.evaluate("""async () => {
            const api = await import('/ui/static/api.js');
            const key = api.auth.key, me = api.auth.me;
            api.auth.clear();  // logged out, with a request on its way
            window.late = api.get('/api/loops?late=1').then(() => 'answered', (e) => e.status);
            api.auth.set(key, me);  // the next key logs in
        }""")
        for _ in range(100):  # the browser hands the request to the route handler
            if held:
                break
            b.page.wait_for_timeout(50)
        assert held, "the request never reached the route"
        held[0].continue_()
        assert b.page.evaluate("window.late") == 401  # refused: it carried no key
        assert b.page.evaluate("sessionStorage.getItem('studio.key')") == server["keys"]["admin-1"]
        assert not b.page.url.endswith("#/login") and b.page.locator("#logout").is_visible()
        assert [e for e in b.errors if "late=1" not in e] == []  # the 401 itself is logged by the browser


def test_the_admin_controls_stay_hidden_until_the_generation_is_read(server, shots):
    """They act on the generation shown (``last``): shown before it is read, a click did nothing and
    said nothing (CI's empty banner, three times): the page hid them with ``hidden``, which the
    ``.row`` class's ``display: flex`` overrode until the stylesheet made ``[hidden]`` win."""
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["admin-1"])
        held = []
        b.page.route(f"**/api/loops/{LOOP}/generations/2", lambda route: held.append(route))
        b.goto(f"#/loops/{LOOP}/2")
        b.wait("#loop-pause")  # the loop is read; its generation is held
        for _ in range(100):
            if held:
                break
            b.page.wait_for_timeout(50)
        assert held, "the generation's request never reached the route"
        assert b.page.locator("#gen-admin").count() == 1 and not b.page.locator("#gen-promote").is_visible()
        held[0].continue_()
        b.wait("#gen-promote")
        b.page.click("#gen-promote")
        b.banner_says("Say why you promote generation 2")
        b.assert_clean()


def test_the_owner_deletes_a_loop_with_no_active_generation(server, shots):
    spec, train = load_loop_recipe(SHIPPED)
    spec = spec.model_copy(update={"name": "spare-loop", "served_name": "spare-name"})
    with session_scope(server["settings"].db_url) as s:
        repo.create_loop(s, spec, train=train.model_dump(mode="json"), created_by="user-1", owner_key_id=server["owner"])
    with chromium_page(server["base"], shots) as b:
        b.login(server["keys"]["user-1"])
        b.goto("#/loops/spare-loop")
        b.wait("#loop-delete")
        b.page.once("dialog", lambda d: d.dismiss())  # asked first: no, and nothing happens
        b.page.click("#loop-delete")
        assert b.page.locator("#loop-delete").is_visible() and "#/loops/spare-loop" in b.page.url
        b.page.once("dialog", lambda d: d.accept())
        b.page.click("#loop-delete")
        b.wait(f"#loops-list a:text-is('{LOOP}')")  # back on the list, without it
        assert b.page.locator("#loops-list a:text-is('spare-loop')").count() == 0
        b.banner_says("Loop spare-loop is deleted with its 0 generations; spare-name is free for a new loop.")
        b.shot("loops-07-deleted")
        b.assert_clean()
    with session_scope(server["settings"].db_url) as s:
        assert [lp.name for lp in repo.list_loops(s)] == [LOOP]
