// Loops (docs/loops.md): the self-driving improvement loops, and a loop's page: its recipe, its
// generations, and the selected generation's timeline (every state change with time, reason and
// actor) and the confidence-sequence chart of its stored looks. Pause, resume, cancel, run by hand
// and delete (once no generation is active) for the loop's owner or an admin; promote, roll back or
// abort a generation for admins only, with a reason the studio records. Polled while a generation
// is active.
import { isAdmin, ownerNote, owns } from "../access.js";
import { get, post, request } from "../api.js";
import { add, badge, banner, fill, fmtTime, h, showError, table } from "../dom.js";
import { duration, lookWords, sequenceChart } from "../loopchart.js";

const POLL_MS = 5000;
const TERMINAL = ["PROMOTED", "REFUSED", "ROLLED_BACK", "FAILED", "CANCELLED"];
const enc = encodeURIComponent;
const signed = (v) => (v === null || v === undefined ? "—" : (v > 0 ? "+" : v < 0 ? "−" : "") + Math.abs(v).toFixed(3));
const pct = (w) => `${Number((w * 100).toFixed(1))} %`;

const genLink = (loop, g) => h("span", {}, h("a", { href: `#/loops/${enc(loop)}/${g.number}` }, `#${g.number}`), " ", badge(g.state));

export async function loopsPage(main) {
  const list = h("div", { id: "loops-list" });
  main.append(h("h1", {}, "Loops"),
    h("p", { class: "muted" }, "Each loop improves one served name from its users' thumbs up/down: train from the champion, " +
      "gate, canary, then promote or roll back (docs/loops.md). Create one with `studio loop create configs/loops/NAME.yaml`."),
    h("div", { class: "card" }, list));
  const rows = await get("/api/loops");
  list.replaceChildren(table([
    { title: "Loop", cell: (l) => h("a", { href: `#/loops/${enc(l.name)}` }, l.name) },
    { title: "Served name", cell: (l) => h("a", { href: `#/models/${enc(l.served_name)}` }, l.served_name) },
    { title: "Status", cell: (l) => h("div", {}, badge(l.status), l.status_reason ? h("div", { class: "muted" }, l.status_reason) : null) },
    { title: "Active generation", cell: (l) => (l.active_generation ? genLink(l.name, l.active_generation) : "none") },
    { title: "Last verdict", cell: (l) => (l.last_ended ? genLink(l.name, l.last_ended) : "none yet") },
    { title: "Generations", cell: (l) => l.generations },
    { title: "Owner", cell: (l) => l.created_by || "—" },
    { title: "Updated", cell: (l) => fmtTime(l.updated_at) },
  ], rows, { empty: "No loops yet: `studio loop create configs/loops/reverse_tiny.yaml` on the state `make demo` leaves." }));
}

export const loopPage = (main, name) => loopDetail(main, name, null);
export const loopGenerationPage = (main, name, number) => loopDetail(main, name, Number(number));

function recipeSummary(spec, train) {
  const t = spec.trigger || {}, d = spec.decision || {}, c = spec.canary || {}, s = spec.shadow || {}, g = spec.gate || {};
  const triggers = [t.min_new_rated ? `${t.min_new_rated} new rated completions` : null,
    t.min_new_pairs ? `${t.min_new_pairs} new preference pairs` : null, t.every_s ? `every ${duration(t.every_s)}` : null,
    t.drift_margin ? `drift of ${t.drift_margin}` : null, t.manual ? "by hand" : null].filter(Boolean);
  const rows = [
    ["Triggers", triggers.join(" · ") || "none"],
    ["Training", `${train ? `${train.method} on ${train.base_model} · ` : ""}${spec.train?.recipe ?? "—"}` +
      (spec.train?.overrides?.length ? ` (${spec.train.overrides.join(", ")})` : "") + ` · replay ${spec.train?.replay_share ?? 0}`],
    ["Gate", (g.dataset ? `${g.scorer?.type ?? "scorer"} on ${g.dataset}, margin ${g.margin ?? 0}` : "the name's own gate") +
      (g.guards?.length ? ` · guards: ${g.guards.map((x) => `${x.name ?? x.scorer?.name ?? x.scorer?.type} (${x.scorer?.type}) ≥ champion − ${x.margin ?? 0}`).join(", ")}` : "") +
      (g.must_pass?.dataset ? ` · must pass every item of ${g.must_pass.dataset} (score ≥ ${g.must_pass.min_score ?? 1})` : "")],
    ["Shadow", s.share ? `${pct(s.share)} mirrored, judged by ${s.judge}, at most ${duration(s.max_duration_s)}` : "skipped"],
    ["Canary", `${(c.steps || []).map((p) => `${p} %`).join(" → ")}, each held ≥ ${duration(c.min_hold_s ?? 0)} and ${c.min_rated_per_arm} rated per arm`],
    ["Decision", `α ${d.alpha}, N* ${d.tuning_n}, margin ${d.noninferiority_margin}, ≥ ${d.min_rated_per_arm} rated per arm, ` +
      `deadline ${duration(d.deadline_s ?? 0)}`],
    ["Cooldown", `${duration(spec.cooldown_s ?? 0)}; ${spec.max_rollbacks_in_a_row} rollbacks in a row pause the loop`],
  ];
  return h("table", { id: "loop-recipe-table" }, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v)))));
}

function timeline(transitions) {
  return h("ol", { class: "timeline", id: "gen-timeline" }, transitions.map((t) => h("li", { "data-to": t.to_state },
    h("span", { class: "muted" }, fmtTime(t.at)), " ", t.from_state ? `${t.from_state} → ` : "", badge(t.to_state),
    ` ${t.reason} · by ${t.actor}`, t.attempt > 1 ? ` · attempt ${t.attempt}` : "",
    t.detail ? h("div", { class: "muted detail" }, t.detail) : null)));
}

function looksTable(looks) {
  const arm = (a) => `${a?.thumbs_up ?? 0}/${a?.rated ?? 0} up · ${a?.completions ?? 0} answers`;
  return h("div", { id: "gen-looks" }, table([
    { title: "Look", cell: (k) => h("span", { title: lookWords(k) }, `#${k.id}`) },
    { title: "At", cell: (k) => h("div", {}, fmtTime(k.at), h("div", { class: "muted" }, duration(k.look?.at_s ?? 0))) },
    { title: "Step · weight", cell: (k) => `${k.step} · ${pct(k.weight)}` },
    { title: "Champion", cell: (k) => arm(k.look?.champion) }, { title: "Candidate", cell: (k) => arm(k.look?.candidate) },
    { title: "Estimate [lower, upper]", cell: (k) => (k.estimate === null ? "—" : `${signed(k.estimate)} [${signed(k.lower)}, ${signed(k.upper)}]`) },
    { title: "Guardrails", cell: (k) => (k.verdict?.guardrails || []).map((g) =>
      h("div", { class: g.status === "breached" ? "err" : g.status === "clear" ? "ok" : "muted", title: g.detail }, `${g.name} ${g.status}`)) },
    { title: "Verdict", cell: (k) => h("div", {}, h("span", { class: `verdict-${k.action}` }, k.action), h("div", { class: "muted" }, k.verdict?.detail ?? "")) },
  ], looks, { empty: "No looks stored (looks are taken in the canary)." }));
}

async function loopDetail(main, name, wanted) {
  const path = `/api/loops/${enc(name)}`;
  const headInfo = h("div", {}), controlSlot = h("div", {});
  const head = h("div", { class: "card", id: "loop-head" }, headInfo, controlSlot);
  const genBox = h("div", { id: "generation" });
  const gens = h("div", { class: "card", id: "loop-generations" });
  const recipe = h("div", { class: "card", id: "loop-recipe" });
  let stopped = false, timer = null, xAxis = "time", last = null;
  const act = async (url, body, words, go = null) => {
    banner(null);
    try {
      const r = await post(url, body);
      banner(words(r), "info");
      if (go) location.hash = go(r);
      else await refresh();
    } catch (e) { showError(e); }
  };

  // The owner's controls and the admin's are built once (a poll must not wipe a reason being typed).
  const loopReason = h("input", { type: "text", id: "loop-reason", placeholder: "reason (optional, recorded)", style: "width: 18rem" });
  const loopButtons = {
    pause: h("button", { class: "secondary", id: "loop-pause", onclick: () => act(`${path}/pause`, { reason: loopReason.value.trim() }, (l) => `Loop ${l.name} is paused.`) }, "Pause"),
    resume: h("button", { class: "secondary", id: "loop-resume", onclick: () => act(`${path}/resume`, { reason: loopReason.value.trim() }, (l) => `Loop ${l.name} is active.`) }, "Resume"),
    run: h("button", { id: "loop-run", onclick: () => act(`${path}/trigger`, { reason: loopReason.value.trim() }, (g) => `Generation ${g.number} is ${g.state}.`,
      (g) => `#/loops/${enc(name)}/${g.number}`) }, "Run a generation now"),
    cancel: h("button", { class: "danger", id: "loop-cancel", onclick: () => act(`${path}/cancel`, { reason: loopReason.value.trim() }, (l) => `Loop ${l.name} is cancelled.`) }, "Cancel loop"),
    del: h("button", { class: "danger", id: "loop-delete", onclick: () => deleteLoop() }, "Delete loop"),
  };
  const deleteLoop = async () => {
    if (!confirm(`Delete loop ${name} and its history (generations, transitions, looks)? ` +
      "Registered versions, jobs, dataset snapshots and feedback stay.")) return;
    banner(null);
    try {
      const r = await request(path, { method: "DELETE" });
      stopped = true; clearTimeout(timer);
      // The router clears the banner when the hash changes: say it once the list has taken over.
      window.addEventListener("hashchange", () => banner(`Loop ${r.name} is deleted with its ${r.generations} generations; ` +
        `${r.served_name} is free for a new loop.`, "info"), { once: true });
      location.hash = "#/loops";
    } catch (e) { showError(e); }
  };
  const loopControls = h("div", { class: "row", id: "loop-controls" }, loopReason, Object.values(loopButtons));
  const genReason = h("input", { type: "text", id: "gen-reason", placeholder: "why (required, recorded with the transition)", style: "width: 22rem" });
  const genAct = (verb, words) => h("button", { class: verb === "promote" ? "" : "danger", id: `gen-${verb}`, onclick: () => {
    if (!last) return;
    if (!genReason.value.trim()) { banner(`Say why you ${words} generation ${last.number}: the reason is recorded with the transition.`); return; }
    act(`${path}/generations/${last.number}/${verb}`, { reason: genReason.value.trim() }, (g) => `Generation ${g.number} is ${g.state}.`);
  } }, words[0].toUpperCase() + words.slice(1));
  const adminControls = isAdmin() ? h("div", { class: "card row", id: "gen-admin" }, h("strong", {}, "Admin:"), genReason,
    genAct("promote", "promote"), genAct("rollback", "roll back"), genAct("abort", "abort")) : null;
  if (adminControls) adminControls.hidden = true;  // shown once the generation they act on is read
  const xSelect = h("select", { id: "cs-x", onchange: () => { xAxis = xSelect.value; if (last) drawChart(last); } },
    h("option", { value: "time" }, "over time"), h("option", { value: "rated" }, "over rated completions"));
  const chartBox = h("div", { id: "cs-box" });
  const drawChart = (g) => chartBox.replaceChildren(sequenceChart(g.looks, g.decision || {}, xAxis));
  const genInfo = h("div", {}), timelineBox = h("div", {}), looksBox = h("div", {}), explainBox = h("p", { id: "cs-explain", class: "muted" });
  add(genBox, h("div", { class: "card" }, genInfo, adminControls, h("h2", {}, "Timeline"), timelineBox),
    h("div", { class: "card" }, h("div", { class: "row" }, h("h2", { style: "margin-right: auto" }, "Confidence sequence"), xSelect),
      chartBox, explainBox, h("h2", {}, "Looks"), looksBox));
  add(main, h("p", {}, h("a", { href: "#/loops" }, "← all loops")), head, genBox, gens, recipe);

  const refresh = async () => {
    clearTimeout(timer);
    const loop = await get(path);
    if (stopped) return;
    const mine = owns(loop.owner_key_id);
    loopButtons.pause.hidden = loop.status !== "active";
    loopButtons.resume.hidden = loop.status === "active";
    loopButtons.cancel.hidden = loop.status === "cancelled";
    loopButtons.run.hidden = loop.status !== "active" || !!loop.active_generation;
    loopButtons.del.hidden = !!loop.active_generation;  // the API refuses it (409): cancel, then delete
    fill(headInfo, h("h1", {}, `Loop ${loop.name} `, badge(loop.status)),
      h("p", {}, "Improves ", h("a", { href: `#/models/${enc(loop.served_name)}` }, loop.served_name),
        ` · by ${loop.created_by || "?"} · ${loop.generations} generations · ${loop.rollbacks_in_a_row} rollbacks in a row`),
      loop.status_reason ? h("p", { class: "muted", id: "loop-status-reason" }, loop.status_reason) : null);
    if (!controlSlot.firstChild) {  // once: a poll must not take the focus from a reason being typed
      fill(controlSlot, mine ? loopControls : h("p", {}, ownerNote("pause, resume, cancel, run or delete it", { id: "loop-owner-note" })));
    }
    fill(recipe, h("h2", {}, "Recipe"), recipeSummary(loop.spec || {}, loop.train));
    const number = wanted ?? loop.active_generation?.number ?? loop.recent_generations[0]?.number ?? null;
    fill(gens, h("h2", {}, "Generations"), table([
      { title: "#", cell: (g) => (g.number === number ? h("strong", {}, `#${g.number}`) : h("a", { href: `#/loops/${enc(name)}/${g.number}` }, `#${g.number}`)) },
      { title: "State", cell: (g) => h("span", {}, badge(g.state), g.paused_from ? ` (in ${g.paused_from})` : "") },
      { title: "Champion → candidate", cell: (g) => `${g.champion || "—"} → ${g.candidate || "—"}` },
      { title: "Canary step", cell: (g) => g.canary_step },
      { title: "Started", cell: (g) => fmtTime(g.created_at) }, { title: "Ended", cell: (g) => fmtTime(g.ended_at) || "—" },
    ], loop.recent_generations, { empty: "No generation yet: a trigger starts one (or Run a generation now)." }));
    if (number === null) { genBox.hidden = true; return; }
    genBox.hidden = false;
    const g = await get(`${path}/generations/${number}`);
    // The stored verdicts recomputed from their counts (`studio loop explain`); none without looks.
    const ex = g.looks.length ? await get(`${path}/generations/${number}/explain`).catch(() => null) : null;
    if (stopped) return;
    last = g;
    const ended = TERMINAL.includes(g.state);
    if (adminControls) adminControls.hidden = ended;
    const steps = loop.spec?.canary?.steps || [];
    fill(genInfo, h("h2", { id: "gen-title" }, `Generation ${g.number} `, badge(g.state), g.paused_from ? ` (paused in ${g.paused_from})` : ""),
      h("p", {}, `champion ${g.champion || "—"} → candidate ${g.candidate || "not trained yet"} · attempt ${g.attempt}`,
        ["CANARY", "PAUSED"].includes(g.state) && steps.length ? ` · canary step ${g.canary_step + 1} of ${steps.length} (${steps[g.canary_step] ?? "?"} %)` : "",
        g.snapshot_id ? h("span", {}, " · data ", h("a", { href: `#/snapshots/${enc(g.snapshot_id)}` }, g.snapshot_id.slice(0, 12))) : "",
        g.cutoff_at ? ` · feedback up to ${fmtTime(g.cutoff_at)}` : ""));
    fill(timelineBox, timeline(g.transitions));
    drawChart(g);
    const d = g.decision || {};
    const bar = d.noninferiority_margin ? `−${d.noninferiority_margin}` : "0";
    fill(explainBox, `Promote when the lower bound clears ${bar} and every guardrail is clear; roll back when ` +
      `the upper bound is below 0 or a guardrail is breached; no verdict before each arm has ${d.min_rated_per_arm ?? "?"} rated ` +
      `(α ${d.alpha ?? "?"}). `, ex && ex.looks.length ? (ex.all_agree ? h("span", { class: "ok" }, "Every stored verdict recomputes the same from its counts.")
      : h("span", { class: "err" }, `Recomputed verdicts differ on looks ${ex.looks.filter((x) => !x.agrees).map((x) => `#${x.look_id}`).join(", ")} (studio loop explain).`)) : null);
    fill(looksBox, looksTable(g.looks));
    if (!stopped && (!ended || loop.active_generation)) timer = setTimeout(() => refresh().catch(showError), POLL_MS);
  };
  await refresh();
  return () => { stopped = true; clearTimeout(timer); };
}
