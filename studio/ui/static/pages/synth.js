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
  // Rows stream in as chunks finish: by default the page follows the newest ones; paging back
  // stops following until "Follow the newest rows" is ticked again.
  const follow = h("input", { type: "checkbox", id: "sy-follow", checked: true });
  const count = h("p", { class: "muted", id: "synth-row-count" });
  main.append(h("p", {}, h("a", { href: "#/datasets" }, "← datasets")), head,
    h("div", { class: "card" }, h("h2", {}, "Rows generated so far"),
      h("label", { class: "row" }, follow, "Follow the newest rows"), count, rows));
  let stopped = false, timer = null, offset = 0, total = 0, expected = null;
  const limit = 10;
  const fetchPage = (at) => get(`/api/synth/${id}/rows?limit=${limit}&offset=${at}`);
  const loadRows = async () => {
    let r = await fetchPage(follow.checked ? Math.max(0, total - limit) : offset);
    if (follow.checked && r.total - Math.max(0, total - limit) > limit) r = await fetchPage(r.total - limit);
    total = r.total;
    if (follow.checked) offset = Math.max(0, total - limit);
    const list = r.rows || [];
    const cols = list.length ? Object.keys(list[0]) : [];
    count.textContent = `${total} rows generated${expected ? ` of about ${expected} asked for` : ""}` +
      (list.length ? ` · showing ${offset + 1}–${offset + list.length}` : "");
    rows.replaceChildren(table([{ title: "#", cell: (x) => String(offset + list.indexOf(x) + 1) },
      ...cols.map((c) => ({ title: c, class: "rowtext", cell: (x) => (typeof x[c] === "string" ? x[c] : JSON.stringify(x[c])) }))],
    list, { empty: "No rows yet: they appear here as chunks are generated." }),
    pager(offset, limit, offset + limit < total, (o) => { follow.checked = false; offset = o; loadRows().catch(showError); }));
  };
  follow.addEventListener("change", () => { if (follow.checked) loadRows().catch(showError); });
  const poll = async () => {
    let done = false;
    try {
      const s = await get(`/api/synth/${id}`);
      if (stopped) return;
      done = TERMINAL.includes(s.status);
      const p = s.progress || {};
      // Pairs asked for: per chunk (the spec, shown to its owner and admins) times the chunks planned.
      expected = s.spec && p.chunks_total && s.spec.mode !== "summary" ? p.chunks_total * (s.spec.pairs_per_chunk || 1)
        : s.spec && p.chunks_total ? p.chunks_total : null;
      const pct = p.chunks_total ? Math.min(100, Math.round((100 * (p.chunks_done || 0)) / p.chunks_total)) : null;
      const out = s.result && (s.result.dataset || s.result.name) ? String(s.result.dataset || s.result.name) : null;
      fill(head, h("h1", {}, `Generation #${s.id} · ${s.name} `, badge(s.status)),
        pct !== null ? h("div", { class: "progress" }, h("div", { style: `width: ${pct}%` })) : null,
        // The server's line ("chunks 15/20 · 63 rows · 1.2 chunks/s · ETA 4s", as the CLI), then the costs.
        h("p", { class: "muted", id: "synth-progress" }, p.text ? `${p.text} · ${p.parse_failures || 0} unparsed · ` +
          `${p.tokens || 0} tokens · $${(p.cost_usd || 0).toFixed(4)}` : "waiting to start…"),
        s.error ? h("p", { class: "err" }, s.error) : null,
        out ? h("p", { id: "synth-result" }, "Result: ", s.result.version ? h("a", { href: `#/snapshots/${encodeURIComponent(`${out}@${s.result.version}`)}` },
          `${out}@${s.result.version}`) : h("a", { href: `#/datasets/${encodeURIComponent(out.split("@")[0])}` }, out),
        s.result.rows != null ? ` · ${s.result.rows} rows kept, ${s.result.dropped ?? 0} dropped` : "") : null,
        done ? null : owns(s.owner_key_id) ? h("button", { class: "danger", id: "sy-cancel", onclick: async () => {
          try { await post(`/api/jobs/${s.id}/cancel`); banner("Cancel requested.", "info"); } catch (e) { showError(e); }
        } }, "Cancel") : ownerNote("cancel it", { id: "sy-owner-note" }));
      await loadRows();
    } catch (e) { showError(e); }
    // Faster while it runs: the rows are the point of the page.
    if (!stopped && !done) timer = setTimeout(poll, 1000);
  };
  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}
