// Jobs: a list paged on the server (newest first, live states; tick training runs to compare them,
// pages/compare.js), and a job page with its state
// timeline, progress, live log tail (SSE over fetch: EventSource cannot send the key), live metric
// charts from /api/jobs/{id}/metrics, and cancel / retry (its owner's and admins': the spec and the
// logs are theirs only too).
import { ownerNote, owns } from "../access.js";
import { get, post, readSSE, request } from "../api.js";
import { badge, banner, fill, fmtTime, h, pager, showError, table } from "../dom.js";
import { lineChart } from "../chart.js";

const PAGE = 25;
const STATUSES = ["QUEUED", "STARTING", "RUNNING", "CHECKPOINTING", "RETRYING", "SUCCEEDED", "FAILED", "CANCELLED"];
const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
const POLL_MS = 2000;

export async function jobsPage(main) {
  const list = h("div", { id: "jobs-list" });
  const status = h("select", { id: "status-filter" }, h("option", { value: "" }, "all states"),
    STATUSES.map((s) => h("option", { value: s }, s)));
  let offset = 0, timer = null, stopped = false;
  // Training runs ticked for "Compare" (2 to 8), kept across pages and refreshes.
  const picked = new Set();
  const compare = h("button", { class: "secondary", id: "compare", disabled: true,
    onclick: () => { location.hash = `#/compare/${[...picked].join(",")}`; } }, "Compare");
  const syncCompare = () => {
    compare.disabled = picked.size < 2 || picked.size > 8;
    compare.textContent = picked.size ? `Compare ${picked.size} runs` : "Compare";
    compare.title = picked.size > 8 ? "at most 8 runs" : "tick 2 to 8 training runs";
  };
  const pick = (j) => (j.kind !== "train" ? "" : h("input", { type: "checkbox", class: "pick", "data-job": String(j.id),
    "aria-label": `compare job ${j.id}`, checked: picked.has(j.id),
    onchange: (ev) => { if (ev.target.checked) picked.add(j.id); else picked.delete(j.id); syncCompare(); } }));
  syncCompare();
  const load = async () => {
    clearTimeout(timer);
    try {
      const q = `limit=${PAGE + 1}&offset=${offset}` + (status.value ? `&status=${status.value}` : "");
      const rows = await get(`/api/jobs?${q}`);
      if (stopped) return;
      list.replaceChildren(table([
        { title: "", cell: pick },
        // Eval and synthesis jobs share the jobs table; each kind has its own page.
        { title: "Job", cell: (j) => h("a", { href: `#/${{ eval: "evals", synth: "synth" }[j.kind] || "jobs"}/${j.id}` }, `#${j.id}`) },
        { title: "Name", cell: (j) => j.name }, { title: "Method", cell: (j) => j.method || j.kind },
        { title: "State", cell: (j) => badge(j.status) },
        // The server's own line (steps, rows or chunks of the total, rate, ETA): the CLI prints the same.
        { title: "Progress", cell: (j) => (j.progress ? h("span", { class: "job-progress" }, j.progress.text) : "") },
        { title: "Attempts", cell: (j) => `${j.attempts}/${j.max_retries + 1}` },
        { title: "By", cell: (j) => j.submitted_by || "" },
        { title: "Created", cell: (j) => fmtTime(j.created_at) },
        { title: "Error", cell: (j) => j.error || "" },
      ], rows.slice(0, PAGE), { empty: status.value ? `No ${status.value} jobs.` : "No jobs yet: start one from New experiment." }),
      pager(offset, PAGE, rows.length > PAGE, (o) => { offset = o; load(); }));
    } catch (e) { showError(e); }
    if (!stopped) timer = setTimeout(load, POLL_MS * 2);
  };
  status.addEventListener("change", () => { offset = 0; load(); });
  main.append(h("h1", {}, "Jobs"), h("div", { class: "row" }, "Show", status,
    h("a", { href: "#/new" }, "+ New experiment"), compare), list);
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}

// What the job trains on: from its spec, which only its owner and admins see; the summary has no
// dataset or base model, so others see a dash.
function inputsOf(job) {
  const spec = job.kind === "sweep" ? job.spec?.train : job.spec;  // a sweep's recipe is its train section
  return `${spec?.data?.dataset ?? "—"} · base ${spec?.base_model ?? "—"}`;
}

// A sweep's trials (GET /api/jobs/{id}'s trials): each a training job with its sampled fields.
function trialsTable(trials) {
  const num = (v, d) => (v === null || v === undefined ? "—" : Number(v).toFixed(d));
  const params = (p) => Object.entries(p).map(([k, v]) => `${k}=${typeof v === "number" ? Number(v.toPrecision(4)) : v}`).join(", ");
  return h("div", { id: "trials" }, h("h2", {}, `Trials (${trials.length})`), table([
    { title: "trial", cell: (t) => h("a", { href: `#/jobs/${t.job_id}` }, `#${t.job_id}`) },
    { title: "params", cell: (t) => params(t.params || {}) },
    { title: "eval_loss", cell: (t) => num(t.eval_loss, 4) },
    { title: "exact match", cell: (t) => num(t.score, 3) },
    { title: "state", cell: (t) => badge(t.status) },
    { title: "time (s)", cell: (t) => num(t.wall_s, 0) },
    { title: "registered", cell: (t) => t.registered || "" },
  ], trials, { empty: "No trial has started yet." }));
}

// Cancel and Retry for the job's owner and admins; Retry resubmits the spec, so it needs to see it.
function actions(job, done, act) {
  if (!owns(job.owner_key_id)) {
    return h("div", { class: "row" }, done && job.status === "SUCCEEDED" ? null
      : ownerNote(done ? "retry it" : "cancel it", { id: "job-owner-note" }));
  }
  return h("div", { class: "row" },
    !done ? h("button", { class: "danger", id: "cancel", onclick: () => act(`Cancel requested for job #${job.id}.`,
      () => post(`/api/jobs/${job.id}/cancel`)) }, "Cancel") : null,
    // Retry = the same pinned spec as a new job (the scheduler's own retries resume in place).
    done && job.status !== "SUCCEEDED" && job.spec ? h("button", { class: "secondary", id: "retry", onclick: async () => {
      try { const j = await post(job.kind === "sweep" ? "/api/jobs/sweep" : "/api/jobs", job.spec); location.hash = `#/jobs/${j.id}`; } catch (e) { showError(e); }
    } }, "Retry as a new job") : null);
}

function timeline(events) {
  return h("ul", { class: "timeline", id: "timeline" }, events.map((e) => h("li", {},
    h("span", { class: "muted" }, fmtTime(e.at)), " ", e.from ? `${e.from} → ` : "", badge(e.to),
    e.reason ? h("span", { class: "muted" }, ` ${e.reason}`) : null)));
}

export async function jobPage(main, id) {
  const head = h("div", { class: "card", id: "job-head" });
  const charts = h("div", { class: "charts", id: "charts" });
  const log = h("pre", { class: "log", id: "log" });
  const logState = h("span", { class: "muted", id: "log-state" }, "connecting…");
  let stopped = false, timer = null;
  const ctl = new AbortController();
  main.append(h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")), head,
    h("div", { class: "card" }, h("h2", {}, "Metrics"), charts),
    h("div", { class: "card" }, h("h2", {}, "Log ", logState), log));

  const act = async (what, fn) => {
    banner(null);
    try { await fn(); banner(what, "info"); await refresh(); } catch (e) { showError(e); }
  };
  let shown = null;
  const render = (job) => {
    shown = job;
    const done = TERMINAL.includes(job.status);
    const p = job.progress;
    const pct = p && p.total ? Math.min(100, Math.round((100 * p.done) / p.total)) : null;
    fill(head,
      h("h1", {}, `Job #${job.id} · ${job.name} `, badge(job.status)),
      h("p", { class: "muted", id: "job-about" }, `${job.kind === "sweep" ? "sweep" : job.method || job.kind} on ${inputsOf(job)}` +
        ` · attempt ${job.attempts} of ${job.max_retries + 1} · by ${job.submitted_by || "?"}`),
      job.spec_hidden ? h("p", { class: "muted", id: "spec-hidden" }, `Recipe ${job.spec_hidden}.`) : null,
      p ? h("div", {}, pct !== null ? h("div", { class: "progress", title: `${pct}%` }, h("div", { style: `width: ${pct}%` })) : null,
        h("span", { class: "muted", id: "progress-text" }, p.text)) : null,
      job.error ? h("p", { class: "err", id: "job-error" }, job.error) : null,
      job.status === "SUCCEEDED" && job.result?.model ? h("p", {}, "Registered ",
        h("a", { href: `#/models/${encodeURIComponent(String(job.result.model).split("@")[0])}` }, String(job.result.model))) : null,
      job.mlflow_url ? h("p", {}, h("a", { href: job.mlflow_url, target: "_blank", rel: "noopener", id: "mlflow-run" },
        "The run in MLflow ↗")) : null,
      job.parent_id ? h("p", { id: "sweep-link" }, "A trial of ", h("a", { href: `#/jobs/${job.parent_id}` }, `sweep #${job.parent_id}`)) : null,
      actions(job, done, act),
      job.trials ? trialsTable(job.trials) : null,
      h("h2", {}, "State timeline"), timeline(job.events || []));
    return done;
  };
  const refresh = async () => {
    const [job, m] = await Promise.all([get(`/api/jobs/${id}`), get(`/api/jobs/${id}/metrics`)]);
    if (stopped) return true;
    const done = render(job);
    // A validation metric (eval_loss, eval_rewards/margins, ...) is drawn over its training series, not alone.
    const latest = (k) => m.metrics[k].filter((p) => p.attempt === Math.max(...m.metrics[k].map((x) => x.attempt)));
    const paired = (k) => k.startsWith("eval_") && m.metrics[k.slice(5)];
    const keys = Object.keys(m.metrics).filter((k) => !paired(k))
      .sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
    charts.replaceChildren(...(keys.length ? keys.map((k) => lineChart(k, latest(k), m.metrics[`eval_${k}`] ? { name: `eval_${k}`, points: latest(`eval_${k}`) } : null))
      : [h("p", { class: "muted" }, done ? "This job reported no metrics." : "Waiting for the first metrics…")]));
    return done;
  };
  const poll = async () => {
    let done = false;
    try { done = await refresh(); } catch (e) { showError(e); }
    if (!stopped && !done) timer = setTimeout(poll, POLL_MS);
  };
  const tail = async () => {
    if (!shown || !owns(shown.owner_key_id)) {
      logState.textContent = "only its owner or an admin can read the logs";
      log.hidden = true;
      return;
    }
    try {
      const resp = await request(`/api/jobs/${id}/logs?follow=true`, { raw: true, signal: ctl.signal });
      logState.textContent = "live";
      await readSSE(resp, (event, data) => {
        const d = JSON.parse(data);
        if (event === "log") {
          log.append(d.line.replace(/\x1b\[[0-9;]*m/g, "") + "\n");  // drop terminal colours
          log.scrollTop = log.scrollHeight;
        } else if (event === "end") {
          logState.textContent = `ended: ${d.status}`;
        } else if (event === "error") {
          logState.textContent = `log stream stopped: ${d.detail}${d.fix ? `. Fix: ${d.fix}` : ""}`;
        }
      });
    } catch (e) {
      if (e.name !== "AbortError") logState.textContent = `no live log: ${e.message}`;
    }
  };
  await poll();
  tail();
  return () => { stopped = true; clearTimeout(timer); ctl.abort(); };
}
