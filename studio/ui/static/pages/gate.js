// The promotion gate on a model's page: the name's gate (golden dataset, scorer, margin, rows,
// answer length; set by the name's owner or an admin, `PUT /api/models/{name}/gate`), an admin's
// options for one promotion (another dataset, scorer or margin, force; each with a recorded reason),
// the verdict of each check of the last promotion (train/serve parity, the eval of candidate vs
// champion) and the name's promotion history. The margin is checked here and by the API: from 0 to 1.
import { isAdmin } from "../access.js";
import { get, request } from "../api.js";
import { badge, banner, field, fill, fmtTime, h, showError, table } from "../dom.js";

// A margin as typed: [value, error]; the API answers 400 for one outside [0, 1] as well.
export function readMargin(raw, { optional = false } = {}) {
  const text = String(raw).trim();
  if (text === "") return optional ? [null, null] : [0, null];
  const v = Number(text);
  if (!Number.isFinite(v)) return [undefined, "must be a number"];
  if (v < 0 || v > 1) return [undefined, "must be from 0 to 1 (a lead in mean score, scores are in [0, 1])"];
  return [v, null];
}

// A scorer as typed, like `studio models gate --scorer`: a type name, or a JSON object.
function readScorer(raw, { optional = false } = {}) {
  const text = String(raw).trim();
  if (text === "") return optional ? [null, null] : [undefined, "required"];
  if (!text.startsWith("{")) return /^[a-z_]+$/.test(text) ? [{ type: text }, null] : [undefined, "a scorer type (exact_match, regex, json, numeric, embedding, judge, http) or a JSON object"];
  try { return [JSON.parse(text), null]; } catch (e) { return [undefined, `not JSON: ${e.message}`]; }
}

function checked(input, err, [value, error]) {
  err.textContent = error || "";
  input.classList.toggle("invalid", !!error);
  return error ? undefined : value;
}

const fmtScore = (v) => (v === null || v === undefined ? "n/a" : Number(v).toFixed(3));

// The verdict of a promotion, check by check: from a 200/202 body's `promotion` or a 409's.
export function verdictView(p) {
  const parity = p.parity;
  const parityCell = !parity ? "not checked (the stage is not gated, or no gate)"
    : parity.status === "ok" ? `ok: ${parity.prompts} prompts answer the same (${parity.compare}-exact) through PEFT and /v1`
    : parity.status === "unchecked" ? `unchecked: ${parity.reason}`
    : `mismatch on prompt ${JSON.stringify(parity.first_mismatch?.prompt)}: PEFT ${JSON.stringify(parity.first_mismatch?.peft)}, ` +
      `served ${JSON.stringify(parity.first_mismatch?.served)}`;
  const scored = p.candidate_score !== null && p.candidate_score !== undefined;
  const evalCell = p.eval_id
    ? h("span", {}, h("a", { href: `#/evals/${p.eval_id}` }, `eval #${p.eval_id}`),
      scored ? ` · candidate ${fmtScore(p.candidate_score)} vs champion ${p.champion} ${fmtScore(p.champion_score)}` : "")
    : parity?.status === "mismatch" ? "not run: the parity check refused first"
    : p.champion ? `no eval against ${p.champion}` : parity ? "no champion to beat" : "not run: no gate for this promotion";
  const evalVerdict = p.outcome === "evaluating" ? "running" : !scored ? "—"
    : /^beats/.test(p.reason) ? "beats" : "does not beat";
  const rows = [
    { check: "parity", verdict: parity ? parity.status : "—", detail: parityCell },
    { check: "eval vs champion", verdict: evalVerdict, detail: evalCell },
  ];
  return h("div", { class: "card", id: "gate-verdict", "data-outcome": p.outcome },
    h("h2", {}, "Gate verdict ", badge(p.outcome.toUpperCase()), ` ${p.ref}`),
    h("p", { class: "verdict-reason" }, p.reason),
    table([{ title: "Check", cell: (r) => r.check }, { title: "Verdict", cell: (r) => h("span", { class: "check-verdict", "data-check": r.check }, r.verdict) },
      { title: "Detail", cell: (r) => r.detail }], rows));
}

// The gate card: the current gate, its form (owner and admins) and the promotion history.
export function gateCard(name, canEdit) {
  const box = h("div", { class: "card", id: "gate-box" });
  const history = h("div", { id: "promotions" });
  const dataset = h("input", { type: "text", id: "gate-dataset", placeholder: "name, name@N or snapshot id", list: "gate-datasets" });
  const datasets = h("datalist", { id: "gate-datasets" });
  const scorer = h("input", { type: "text", id: "gate-scorer", value: "exact_match", style: "width: 22rem" });
  const margin = h("input", { type: "number", id: "gate-margin", step: "any", min: "0", max: "1", value: "0" });
  const limit = h("input", { type: "number", id: "gate-limit", step: "1", min: "1", placeholder: "(all rows)" });
  const maxTokens = h("input", { type: "number", id: "gate-max-tokens", step: "1", min: "1", value: "64" });
  const errs = Object.fromEntries(["dataset", "scorer", "margin"].map((k) => [k, h("div", { class: "field-error", "data-error-for": `gate-${k}` })]));
  const current = h("div", { id: "gate-current" }, h("p", { class: "muted" }, "Loading…"));
  const save = h("button", { type: "button", id: "gate-save" }, "Save gate");
  margin.addEventListener("input", () => checked(margin, errs.margin, readMargin(margin.value)));
  const load = async () => {
    const [g, events] = await Promise.all([get(`/api/models/${encodeURIComponent(name)}/gate`),
      get(`/api/models/${encodeURIComponent(name)}/promotions`)]);
    const gate = g.gate;
    fill(current, gate
      ? h("p", { id: "gate-summary" }, `Gated: ${gate.scorer?.type || JSON.stringify(gate.scorer)} on ${gate.dataset}` +
        `${gate.limit ? ` (first ${gate.limit} rows)` : ""}, margin ${gate.margin}, answers up to ${gate.generation?.max_tokens ?? 64} tokens; ` +
        "a champion promotion also checks train/serve parity.")
      : h("p", { class: "muted", id: "gate-summary" }, "Not gated: promotions are not checked against the champion."));
    if (gate) {
      dataset.value = gate.dataset;
      scorer.value = Object.keys(gate.scorer || {}).length === 1 ? gate.scorer.type : JSON.stringify(gate.scorer);
      margin.value = String(gate.margin);
      limit.value = gate.limit ?? "";
      maxTokens.value = gate.generation?.max_tokens ?? 64;
    }
    fill(history, h("h2", {}, "Promotions"), table([
      { title: "Version", cell: (e) => `${name}@${e.version}` }, { title: "To", cell: (e) => e.to_stage },
      { title: "Outcome", cell: (e) => badge(e.outcome.toUpperCase()) },
      { title: "Reason", cell: (e) => e.reason }, { title: "By", cell: (e) => e.by || "—" },
      { title: "At", cell: (e) => fmtTime(e.at) },
    ], events.slice().reverse(), { empty: "No promotions yet." }));
  };
  save.addEventListener("click", async () => {
    banner(null);
    const body = {
      dataset: checked(dataset, errs.dataset, dataset.value.trim() ? [dataset.value.trim(), null] : [undefined, "required"]),
      scorer: checked(scorer, errs.scorer, readScorer(scorer.value)),
      margin: checked(margin, errs.margin, readMargin(margin.value)),
      limit: limit.value.trim() ? Number(limit.value) : null,
      generation: { max_tokens: Number(maxTokens.value) || 64 },
    };
    if ([body.dataset, body.scorer, body.margin].includes(undefined)) return;  // said next to the field
    save.disabled = true;
    try {
      await request(`/api/models/${encodeURIComponent(name)}/gate`, { method: "PUT", json: body });
      await load();
      banner(`The promotion gate of ${name} is saved.`, "info");
    } catch (e) { showError(e); } finally { save.disabled = false; }
  });
  get("/api/datasets?limit=200").then((rows) => fill(datasets, rows.map((d) => h("option", { value: d.name }))))
    .catch(() => { /* suggestions only */ });
  fill(box, h("h2", {}, "Promotion gate"), current,
    canEdit ? h("div", { id: "gate-form" },
      h("div", { class: "grid" },
        h("div", {}, field("Golden dataset", dataset, "the evals compare candidate and champion on it"), datasets, errs.dataset),
        h("div", {}, field("Scorer", scorer, "a type, or a JSON scorer, e.g. {\"type\": \"regex\", \"pattern\": \"^\\\\d+$\"}"), errs.scorer),
        h("div", {}, field("Margin", margin, "the candidate's mean must beat the champion's by more than this (0 to 1)"), errs.margin),
        field("Rows", limit, "evaluate only the first N rows"),
        field("Max tokens", maxTokens, "longest answer generated in the gate's eval")),
      h("p", {}, save))
      : h("p", { class: "muted owner-note", id: "gate-owner-note" }, "only the name's owner or an admin can change its gate"),
    history);
  return { view: box, load };
}

// An admin's options for one promotion: another dataset, scorer or margin, or force; each needs
// a reason the studio records. body(): the fields to send, null when something is wrong (said).
export function overrideControls() {
  const force = h("input", { type: "checkbox", id: "promote-force" });
  const reason = h("input", { type: "text", id: "promote-reason", placeholder: "why (recorded with the promotion)", style: "width: 22rem" });
  const dataset = h("input", { type: "text", id: "promote-dataset", placeholder: "(the gate's)" });
  const scorer = h("input", { type: "text", id: "promote-scorer", placeholder: "(the gate's)" });
  const margin = h("input", { type: "number", id: "promote-margin", step: "any", min: "0", max: "1", placeholder: "(the gate's)" });
  const errs = { scorer: h("div", { class: "field-error" }), margin: h("div", { class: "field-error", "data-error-for": "promote-margin" }) };
  margin.addEventListener("input", () => checked(margin, errs.margin, readMargin(margin.value, { optional: true })));
  const view = h("div", { class: "card", id: "promote-force-box" },
    h("h2", {}, "This promotion only (admin)"),
    h("div", { class: "grid" },
      field("Dataset", dataset, "another golden dataset"),
      h("div", {}, field("Scorer", scorer, "another scorer"), errs.scorer),
      h("div", {}, field("Margin", margin, "0 to 1"), errs.margin)),
    h("div", { class: "row" }, h("label", {}, force, " force past the promotion gate"), reason));
  const body = () => {
    const out = {};
    const m = checked(margin, errs.margin, readMargin(margin.value, { optional: true }));
    const s = checked(scorer, errs.scorer, readScorer(scorer.value, { optional: true }));
    if (m === undefined || s === undefined) { banner("Fix the fields marked in red (this promotion only)."); return null; }
    if (m !== null) out.margin = m;
    if (s !== null) out.scorer = s;
    if (dataset.value.trim()) out.dataset = dataset.value.trim();
    if (force.checked) out.force = true;
    if (!Object.keys(out).length) return {};
    if (!reason.value.trim()) {
      banner("Say why you force the promotion or override the gate (the reason is recorded), or clear those fields.");
      return null;
    }
    return { ...out, reason: reason.value.trim() };
  };
  return { view, body };
}

export const adminOverrides = () => (isAdmin() ? overrideControls() : null);
