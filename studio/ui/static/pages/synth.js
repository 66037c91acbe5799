// Synthetic data: start a generation job (QA / chain-of-thought / summaries from a snapshot of
// documents, through a gateway model) and watch its progress and draft rows live; its owner or an
// admin may cancel it.
import { ownerNote, owns } from "../access.js";
import { get, post } from "../api.js";
import { badge, banner, field, fill, h, pager, showError, table } from "../dom.js";

const TERMINAL = ["SUCCEEDED", "FAILED", "CANCELLED"];

export async function synthForm() {
  const source = h("input", { type: "text", id: "sy-source", placeholder: "snapshot of documents or text: name or name@N" });
  const name = h("input", { type: "text", id: "sy-name", placeholder: "name of the generated dataset" });
  const mode = h("select", { id: "sy-mode" }, ["qa", "cot", "summary"].map((m) => h("option", { value: m }, m)));
  const model = h("input", { type: "text", id: "sy-model", value: "judge", placeholder: "gateway model group" });
  const pairs = h("input", { type: "number", id: "sy-pairs", value: "3", min: "1", max: "50", step: "1" });
  const maxChunks = h("input", { type: "number", id: "sy-max-chunks", min: "1", step: "1", placeholder: "(all)" });
  const button = h("button", { type: "submit", id: "sy-start" }, "Start generation");
  const submit = async (ev) => {
    ev.preventDefault();
    banner(null);
    const spec = { source: source.value.trim(), name: name.value.trim(), mode: mode.value, model: model.value.trim(),
      pairs_per_chunk: Number(pairs.value) };
    if (maxChunks.value) spec.max_chunks = Number(maxChunks.value);
    button.disabled = true;
    try {
      const job = await post("/api/synth", { spec });
      location.hash = `#/synth/${job.id}`;
    } catch (e) { showError(e); } finally { button.disabled = false; }
  };
  return h("form", { class: "card", onsubmit: submit, id: "synth-form" }, h("h2", {}, "Generate synthetic data"),
    h("div", { class: "grid" }, field("Source snapshot", source), field("New dataset name", name), field("Mode", mode),
      field("Generator model", model, "a gateway group"), field("Pairs per chunk", pairs), field("Max chunks", maxChunks)),
    h("p", {}, button));
}

export async function synthPage(main, id) {
  const head = h("div", { class: "card", id: "synth-head" });
  const rows = h("div", { id: "synth-rows" });
  main.append(h("p", {}, h("a", { href: "#/datasets" }, "← datasets")), head,
    h("div", { class: "card" }, h("h2", {}, "Rows generated so far"), rows));
  let stopped = false, timer = null, offset = 0;
  const limit = 10;
  const loadRows = async () => {
    const r = await get(`/api/synth/${id}/rows?limit=${limit}&offset=${offset}`);
    const list = r.rows || [];
    const cols = list.length ? Object.keys(list[0]) : [];
    rows.replaceChildren(table(cols.map((c) => ({ title: c, class: "rowtext",
      cell: (x) => (typeof x[c] === "string" ? x[c] : JSON.stringify(x[c])) })), list, { empty: "No rows yet." }),
    pager(offset, limit, r.total !== undefined ? offset + limit < r.total : list.length === limit,
      (o) => { offset = o; loadRows().catch(showError); }));
  };
  const poll = async () => {
    let done = false;
    try {
      const s = await get(`/api/synth/${id}`);
      if (stopped) return;
      done = TERMINAL.includes(s.status);
      const p = s.progress || {};
      const pct = p.chunks_total ? Math.min(100, Math.round((100 * (p.chunks_done || 0)) / p.chunks_total)) : null;
      const out = s.result && (s.result.dataset || s.result.name) ? String(s.result.dataset || s.result.name) : null;
      fill(head, h("h1", {}, `Generation #${s.id} · ${s.name} `, badge(s.status)),
        pct !== null ? h("div", { class: "progress" }, h("div", { style: `width: ${pct}%` })) : null,
        // The server's line ("chunks 15/20 · 63 rows · 1.2 chunks/s · ETA 4s", as the CLI), then the costs.
        h("p", { class: "muted", id: "synth-progress" }, p.text ? `${p.text} · ${p.parse_failures || 0} unparsed · ` +
          `${p.tokens || 0} tokens · $${(p.cost_usd || 0).toFixed(4)}` : "waiting to start…"),
        s.error ? h("p", { class: "err" }, s.error) : null,
        out ? h("p", {}, "Result: ", h("a", { href: `#/datasets/${encodeURIComponent(out.split("@")[0])}` }, out)) : null,
        done ? null : owns(s.owner_key_id) ? h("button", { class: "danger", id: "sy-cancel", onclick: async () => {
          try { await post(`/api/jobs/${s.id}/cancel`); banner("Cancel requested.", "info"); } catch (e) { showError(e); }
        } }, "Cancel") : ownerNote("cancel it", { id: "sy-owner-note" }));
      await loadRows();
    } catch (e) { showError(e); }
    if (!stopped && !done) timer = setTimeout(poll, 2000);
  };
  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}
