// Evaluations: runs (paged on the server), start one (models, dataset, scorers; shows the YAML
// and CLI), and a run's page: live progress and leaderboard, then per-datapoint drill-down; its
// owner or an admin may cancel it.
import { ownerNote, owns } from "../access.js";
import { get, post } from "../api.js";
import { add, badge, banner, field, fill, fmtTime, h, pager, showError, table } from "../dom.js";
import { toYaml } from "../yaml.js";

const PAGE = 25;
const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];
const num = (v, d = 3) => (v === null || v === undefined ? "—" : Number(v.toFixed(d)).toString());

function progressBar(p) {
  if (!p) return null;
  const pct = p.total ? Math.min(100, Math.round((100 * p.done) / p.total)) : null;
  return h("div", {}, pct !== null ? h("div", { class: "progress" }, h("div", { style: `width: ${pct}%` })) : null,
    h("span", { class: "muted eval-progress" }, p.text));  // "rows 150/200 · 12.3 rows/s · ETA 4s", as the CLI
}

async function startForm() {
  let served = [];
  try { served = (await get("/v1/models")).data.map((m) => m.id); } catch { /* typed by hand then */ }
  const datasets = await get("/api/datasets?limit=500");
  const name = h("input", { type: "text", id: "ev-name", value: "eval" });
  const dataset = h("input", { type: "text", id: "ev-dataset", list: "ev-datasets", placeholder: "name or name@N" });
  const models = h("input", { type: "text", id: "ev-models", list: "ev-served",
    placeholder: "comma-separated, e.g. tiny, reverse-tiny@1", value: served.slice(0, 2).join(", ") });
  const limit = h("input", { type: "number", id: "ev-limit", min: "1", step: "1", value: "50" });
  const maxTokens = h("input", { type: "number", id: "ev-max-tokens", min: "1", step: "1", value: "16" });
  const exact = h("input", { type: "checkbox", id: "ev-exact", checked: true });
  const regex = h("input", { type: "text", id: "ev-regex", placeholder: "(optional) e.g. ^[0-9 ]+$" });
  const judge = h("input", { type: "text", id: "ev-judge", placeholder: "(optional) gateway group, e.g. judge" });
  const yaml = h("pre", { id: "ev-yaml" });
  const button = h("button", { type: "submit", id: "ev-start" }, "Start evaluation");
  const build = () => {
    const scorers = [];
    if (exact.checked) scorers.push({ type: "exact_match" });
    if (regex.value.trim()) scorers.push({ type: "regex", name: "regex", pattern: regex.value.trim(), full_match: true });
    if (judge.value.trim()) scorers.push({ type: "judge", model: judge.value.trim() });
    const spec = { name: name.value.trim(), dataset: dataset.value.trim(),
      models: models.value.split(",").map((m) => m.trim()).filter(Boolean),
      generation: { max_tokens: Number(maxTokens.value) }, scorers };
    if (limit.value) spec.limit = Number(limit.value);
    yaml.textContent = `# studio eval run ${spec.name || "eval"}.yaml --watch\n${toYaml(spec)}`;
    return spec;
  };
  const submit = async (ev) => {
    ev.preventDefault();
    banner(null);
    const spec = build();
    if (!spec.models.length || !spec.dataset || !spec.scorers.length) {
      banner("An evaluation needs a dataset, at least one model and at least one scorer.");
      return;
    }
    button.disabled = true;
    try {
      const run = await post("/api/evals", spec);
      location.hash = `#/evals/${run.id}`;
    } catch (e) { showError(e); } finally { button.disabled = false; }
  };
  const form = h("form", { class: "card", onsubmit: submit, oninput: build, onchange: build },
    h("h2", {}, "Start an evaluation"),
    h("datalist", { id: "ev-datasets" }, datasets.map((d) => h("option", { value: `${d.name}@${d.version}` }, `${d.kind} · ${d.rows} rows`))),
    h("datalist", { id: "ev-served" }, served.map((m) => h("option", { value: m }))),
    h("div", { class: "grid" }, field("Name", name), field("Dataset", dataset), field("Models", models, "2–4 to compare"),
      field("Rows", limit, "first N"), field("Max tokens", maxTokens)),
    h("label", {}, exact, " exact match"), field("Regex scorer", regex), field("Judge scorer", judge),
    h("h2", {}, "Recipe"), yaml, h("p", {}, button));
  build();
  return form;
}

export async function evalsPage(main) {
  const list = h("div", { id: "evals-list" });
  let offset = 0;
  const load = async () => {
    try {
      const rows = await get(`/api/evals?limit=${PAGE + 1}&offset=${offset}`);
      list.replaceChildren(table([
        { title: "Run", cell: (r) => h("a", { href: `#/evals/${r.id}` }, `#${r.id}`) },
        { title: "Name", cell: (r) => r.name }, { title: "Dataset", cell: (r) => r.dataset || "— (lm-eval)" },
        { title: "Models", cell: (r) => (r.models || []).join(", ") },
        { title: "Scorers", cell: (r) => (r.scorers || []).join(", ") },
        { title: "State", cell: (r) => badge(r.status) },
        { title: "Progress", cell: (r) => (r.progress ? r.progress.text : "") },
        { title: "Created", cell: (r) => fmtTime(r.created_at) },
      ], rows.slice(0, PAGE), { empty: "No evaluations yet." }),
      pager(offset, PAGE, rows.length > PAGE, (o) => { offset = o; load(); }));
    } catch (e) { showError(e); }
  };
  main.append(h("h1", {}, "Evaluations"), await startForm(), h("div", { class: "card" }, h("h2", {}, "Runs"), list));
  await load();
}

function leaderboard(lb) {
  const scores = (lb.scores || []).slice().sort((a, b) => a.scorer.localeCompare(b.scorer) || (b.mean ?? -1) - (a.mean ?? -1));
  return h("div", { id: "leaderboard" },
    table([
      { title: "Scorer", cell: (s) => s.scorer }, { title: "Model", cell: (s) => s.model },
      { title: "Mean", cell: (s) => num(s.mean) },
      { title: "95% CI", cell: (s) => (s.ci95 ? `${num(s.ci95[0])} – ${num(s.ci95[1])}` : "—") },
      { title: "Scored", cell: (s) => s.n }, { title: "Unscored", cell: (s) => s.unscored },
    ], scores, { empty: "No scores yet." }),
    (lb.models || []).length ? h("div", {}, h("h2", {}, "Answers, latency and cost"), table([
      { title: "Model", cell: (m) => m.model }, { title: "Answers", cell: (m) => m.answers },
      { title: "Errors", cell: (m) => m.errors }, { title: "Cache hits", cell: (m) => m.cache_hits },
      { title: "Latency p50 / p95 ms", cell: (m) => `${num(m.latency_ms_p50, 0)} / ${num(m.latency_ms_p95, 0)}` },
      { title: "Cost USD", cell: (m) => num(m.cost_usd, 6) },
    ], lb.models)) : null,
    (lb.win_rates || []).length ? h("div", {}, h("h2", {}, "Head to head"), table([
      { title: "Scorer", cell: (w) => w.scorer }, { title: "Model", cell: (w) => w.model },
      { title: "vs", cell: (w) => w.opponent }, { title: "Win rate", cell: (w) => num(w.win_rate) },
      { title: "Datapoints", cell: (w) => w.n },
    ], lb.win_rates)) : null);
}

export async function evalPage(main, id) {
  const head = h("div", { class: "card", id: "eval-head" });
  const board = h("div", { class: "card" });
  const drill = h("div", { id: "eval-results" });
  const modelFilter = h("select", { id: "ev-model-filter" }, h("option", { value: "" }, "all models"));
  let stopped = false, timer = null, offset = 0;
  const limit = 20;
  add(main, h("p", {}, h("a", { href: "#/evals" }, "← all evaluations")), head, board,
    h("div", { class: "card" }, h("h2", {}, "Per datapoint"), h("div", { class: "row" }, "Show", modelFilter), drill));
  const loadResults = async () => {
    try {
      const q = `limit=${limit}&offset=${offset}` + (modelFilter.value ? `&model=${encodeURIComponent(modelFilter.value)}` : "");
      const r = await get(`/api/evals/${id}/results?${q}`);
      drill.replaceChildren(table([
        { title: "#", cell: (x) => x.datapoint }, { title: "Model", cell: (x) => x.model_version || x.model },
        { title: "Input", class: "rowtext", cell: (x) => inputText(x.input) },
        { title: "Reference", class: "rowtext", cell: (x) => x.reference ?? "" },
        { title: "Output", class: "rowtext", cell: (x) => (x.error ? h("span", { class: "err" }, x.error) : x.output ?? "") },
        { title: "Scores", cell: (x) => Object.entries(x.scores || {}).map(([k, s]) =>
          h("div", { title: s.reason || "" }, `${k}: ${s.score === null ? s.status : num(s.score)}`)) },
      ], [...r.results].sort((a, b) => a.datapoint - b.datapoint || a.model.localeCompare(b.model)),
      { empty: "No answers yet." }),
      pager(offset, limit, r.results.length === limit, (o) => { offset = o; loadResults(); }));
    } catch (e) { showError(e); }
  };
  modelFilter.addEventListener("change", () => { offset = 0; loadResults(); });
  const poll = async () => {
    let done = false;
    try {
      const run = await get(`/api/evals/${id}`);
      if (stopped) return;
      done = TERMINAL.includes(run.status);
      if (modelFilter.options.length === 1) {
        for (const m of run.models || []) modelFilter.append(h("option", { value: m }, m));
      }
      fill(head, h("h1", {}, `Evaluation #${run.id} · ${run.name} `, badge(run.status)),
        h("p", { class: "muted" }, `${(run.models || []).join(" vs ")} on ${run.dataset || "lm-eval tasks"} · scorers ${(run.scorers || []).join(", ")} · by ${run.submitted_by || "?"}`),
        progressBar(run.progress), run.error ? h("p", { class: "err" }, run.error) : null,
        done ? null : owns(run.owner_key_id) ? h("button", { class: "danger", id: "ev-cancel", onclick: async () => {
          try { await post(`/api/evals/${id}/cancel`); banner("Cancel requested.", "info"); } catch (e) { showError(e); }
        } }, "Cancel") : ownerNote("cancel it", { id: "ev-owner-note" }));
      fill(board, h("h2", {}, done ? "Leaderboard" : "Leaderboard (filling in live)"), leaderboard(run.leaderboard || {}));
      await loadResults();
    } catch (e) { showError(e); }
    if (!stopped && !done) timer = setTimeout(poll, 2000);
  };
  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}

// The messages sent, as "role: text" lines (a bare user turn as its text alone).
function inputText(input) {
  if (typeof input === "string") return input;
  if (!Array.isArray(input)) return JSON.stringify(input);
  if (input.length === 1 && input[0]?.role === "user" && typeof input[0].content === "string") return input[0].content;
  return input.map((m) => `${m?.role ?? "?"}: ${typeof m?.content === "string" ? m.content : JSON.stringify(m?.content)}`).join("\n");
}
