// Datasets: upload + ingest with a column mapping, names (paged on the server), versions, and a
// snapshot's stats and rows (paged on the server) and its download. Files travel over HTTP both
// ways: writing to or reading from a server path is an admin's API call, not the UI's.
import { get, request } from "../api.js";
import { barChart } from "../chart.js";
import { curateCard, diffCard, exportOptions, splitCard } from "./snapshottools.js";
import { synthForm } from "./synth.js";
import { add, banner, field, fmtTime, h, pager, saveDownload, showError, table } from "../dom.js";

const PAGE = 25;
// The columns each row kind needs (studio.data.kinds.COLUMNS): the targets of a column mapping.
const TARGETS = ["prompt", "completion", "messages", "chosen", "rejected", "text"];

function uploadCard(onDone) {
  const file = h("input", { type: "file", id: "upload-file", accept: ".jsonl,.json,.csv,.parquet" });
  const name = h("input", { type: "text", id: "upload-name", placeholder: "e.g. support-chats" });
  const kind = h("select", { id: "upload-kind" }, h("option", { value: "" }, "detect from columns"),
    ["chat", "prompt_completion", "preference", "text"].map((k) => h("option", { value: k }, k)));
  const maps = h("div", { id: "column-map" });
  const addMap = () => maps.append(h("div", { class: "row map-row" },
    h("select", { class: "map-target" }, TARGETS.map((t) => h("option", { value: t }, t))),
    h("span", {}, "← file column"),
    h("input", { type: "text", class: "map-source", placeholder: "e.g. answer", style: "width: 12rem" })));
  const report = h("div", { id: "ingest-report" });
  const button = h("button", { type: "submit", id: "upload-submit" }, "Upload and ingest");
  const submit = async (ev) => {
    ev.preventDefault();
    banner(null);
    report.replaceChildren();
    if (!file.files.length) { banner("Choose a file to upload (JSONL, JSON, CSV or Parquet)."); return; }
    if (!name.value.trim()) { banner("Give the dataset a name (letters, digits, '-', '_', '.')."); return; }
    const form = new FormData();
    form.append("file", file.files[0]);
    form.append("name", name.value.trim());
    if (kind.value) form.append("kind", kind.value);
    const mapping = {};
    for (const row of maps.querySelectorAll(".map-row")) {
      const src = row.querySelector(".map-source").value.trim();
      if (src) mapping[row.querySelector(".map-target").value] = src;
    }
    if (Object.keys(mapping).length) form.append("column_map", JSON.stringify(mapping));
    button.disabled = true;
    button.textContent = "Ingesting…";
    try {
      const r = await request("/api/datasets", { method: "POST", form });
      add(report, h("p", { class: "ok" },
        `${r.created ? "Created" : "Unchanged (same content):"} ${r.name}@${r.version} · ${r.kind} · ` +
        `${r.row_count} rows kept, ${r.rejected_count} dropped · snapshot ${r.snapshot_id.slice(0, 12)}`),
        r.rejected.length ? h("div", {}, h("h2", {}, "Dropped rows"),
          table([{ title: "Row", cell: (x) => x.row }, { title: "Reason", cell: (x) => x.reason }], r.rejected)) : null,
        h("p", {}, h("a", { href: `#/snapshots/${encodeURIComponent(`${r.name}@${r.version}`)}` }, "Open the snapshot")));
      onDone();
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
      button.textContent = "Upload and ingest";
    }
  };
  return h("div", { class: "card" }, h("h2", {}, "Upload a dataset"),
    h("form", { onsubmit: submit, id: "upload-form" },
      h("div", { class: "grid" }, field("File", file), field("Name", name), field("Row kind", kind)),
      h("label", {}, "Column mapping", h("span", { class: "help" }, "rename file columns to the columns a kind needs")),
      maps, h("button", { type: "button", class: "secondary", onclick: addMap, id: "add-map" }, "+ Map a column"),
      h("p", {}, button)),
    report);
}

export async function datasetsPage(main) {
  const list = h("div", {});
  let offset = 0;
  const load = async () => {
    try {
      const rows = await get(`/api/datasets?limit=${PAGE + 1}&offset=${offset}`);
      list.replaceChildren(
        table([
          { title: "Name", cell: (d) => h("a", { href: `#/datasets/${encodeURIComponent(d.name)}` }, d.name) },
          { title: "Newest", cell: (d) => h("a", { href: `#/snapshots/${encodeURIComponent(`${d.name}@${d.version}`)}` }, `v${d.version}`) },
          { title: "Kind", cell: (d) => d.kind },
          { title: "Rows", cell: (d) => d.rows },
          { title: "Dropped", cell: (d) => d.rejected_rows },
          { title: "Created", cell: (d) => fmtTime(d.created_at) },
        ], rows.slice(0, PAGE), { empty: "No datasets yet: upload one above." }),
        pager(offset, PAGE, rows.length > PAGE, (o) => { offset = o; load(); }));
    } catch (e) { showError(e); }
  };
  main.append(h("h1", {}, "Datasets"), uploadCard(load), await synthForm(),
    h("div", { class: "card" }, h("h2", {}, "Datasets"), list));
  await load();
}

export async function datasetPage(main, name) {
  const list = h("div", {});
  let offset = 0;
  const load = async () => {
    try {
      const r = await get(`/api/datasets/${encodeURIComponent(name)}?newest_first=true&limit=${PAGE + 1}&offset=${offset}`);
      list.replaceChildren(table([
        { title: "Version", cell: (v) => h("a", { href: `#/snapshots/${encodeURIComponent(`${v.name}@${v.version}`)}` }, `${v.name}@${v.version}`) },
        { title: "Snapshot", cell: (v) => v.snapshot_id.slice(0, 12) },
        { title: "Kind", cell: (v) => v.kind }, { title: "Rows", cell: (v) => v.rows },
        { title: "Dropped", cell: (v) => v.rejected_rows }, { title: "Source", cell: (v) => v.source || "" },
        { title: "Created", cell: (v) => fmtTime(v.created_at) },
      ], r.versions.slice(0, PAGE)), pager(offset, PAGE, r.versions.length > PAGE, (o) => { offset = o; load(); }));
    } catch (e) { showError(e); }
  };
  main.append(h("h1", {}, `Dataset ${name}`), h("p", {}, h("a", { href: "#/datasets" }, "← all datasets")),
    h("div", { class: "card" }, h("h2", {}, "Versions (newest first)"), list));
  await load();
}

// A snapshot (or one split of it) as one file, fetched with the key (a plain link could not send
// it) and handed to the browser as a download.
function downloadButtons(ref) {
  const options = exportOptions();
  const save = async (format, button) => {
    banner(null);
    button.disabled = true;
    try {
      const resp = await request(`/api/datasets/${encodeURIComponent(ref)}/export?format=${format}${options.query()}`, { raw: true });
      await saveDownload(resp, `${ref}.${format}`);
    } catch (e) { showError(e); } finally { button.disabled = false; }
  };
  return h("div", { class: "row", id: "snapshot-download" }, "Download",
    ["jsonl", "parquet"].map((format) => {
      const button = h("button", { class: "secondary", id: `download-${format}`, type: "button" }, format.toUpperCase());
      button.addEventListener("click", () => save(format, button));
      return button;
    }), options.view);
}

function statsView(stats) {
  const flat = Object.entries(stats || {}).map(([k, v]) => ({ k, v: typeof v === "object" ? JSON.stringify(v) : String(v) }));
  return table([{ title: "Statistic", cell: (s) => s.k }, { title: "Value", cell: (s) => s.v }], flat,
    { empty: "No statistics recorded." });
}

export async function snapshotPage(main, ref) {
  const [name, version] = ref.split("@");
  const rowsBox = h("div", { id: "sample-rows" });
  const info = h("div", {});
  add(main, h("h1", {}, `Snapshot ${ref}`),
    version ? h("p", {}, h("a", { href: `#/datasets/${encodeURIComponent(name)}` }, `← versions of ${name}`)) : null,
    info, h("div", { class: "card" }, h("h2", {}, "Rows"), downloadButtons(ref), rowsBox));
  const limit = 10;
  let offset = 0;
  const loadRows = async () => {
    try {
      const r = await get(`/api/datasets/${encodeURIComponent(ref)}/rows?limit=${limit}&offset=${offset}`);
      const cols = r.rows.length ? Object.keys(r.rows[0]) : [];
      rowsBox.replaceChildren(h("p", { class: "muted" }, `${r.total} rows`),
        table(cols.map((c) => ({ title: c, class: "rowtext",
          cell: (row) => typeof row[c] === "string" ? row[c] : JSON.stringify(row[c], null, 1) })), r.rows),
        pager(offset, limit, offset + limit < r.total, (o) => { offset = o; loadRows(); }));
    } catch (e) { showError(e); }
  };
  // A bare snapshot id (from a model's lineage) has rows but no name to look its version up by.
  if (version) try {
    const all = await get(`/api/datasets/${encodeURIComponent(name)}?limit=1&offset=${Math.max(0, Number(version) - 1)}`);
    const v = all.versions.find((x) => String(x.version) === version) || all.versions[0];
    if (v) {
      info.append(h("div", { class: "card" }, h("h2", {}, "Lineage and stats"),
        h("p", {}, `kind ${v.kind} · ${v.rows} rows · ${v.rejected_rows} dropped at ingest · columns ${(v.columns || []).join(", ")}`),
        h("p", { class: "muted" }, `snapshot ${v.snapshot_id} · from ${v.source || "?"} · ${fmtTime(v.created_at)} · stored at ${v.uri}`),
        statsView(v.stats)));
    }
  } catch (e) { showError(e); }
  await loadRows();
  await Promise.all([droppedCard(main, ref), statsCard(main, ref)]);
  await toolCards(main, ref, version ? name : null);
}

// Curate, split and diff (snapshottools.js); the diff suggests the name's other versions.
async function toolCards(main, ref, name) {
  let versions = [];
  if (name) try {
    const r = await get(`/api/datasets/${encodeURIComponent(name)}?newest_first=true&limit=50`);
    versions = r.versions.map((v) => `${v.name}@${v.version}`);
  } catch (e) { showError(e); }
  const diff = diffCard(ref, versions);
  const curate = await curateCard(ref, name);
  curate.onDiff(diff.diffWith);
  main.append(curate.card, splitCard(ref, name), diff.card);
}

// Rows the ingest rejected (or a transform dropped), each with its reason, page by page.
async function droppedCard(main, ref) {
  const box = h("div", { id: "dropped-rows" });
  main.append(h("div", { class: "card" }, h("h2", {}, "Dropped rows"), box));
  const limit = 10;
  let offset = 0;
  const load = async () => {
    try {
      const r = await get(`/api/datasets/${encodeURIComponent(ref)}/dropped?limit=${limit}&offset=${offset}`);
      box.replaceChildren(h("p", { class: "muted" }, `${r.total} dropped`),
        table([{ title: "Row", cell: (x) => x.row ?? "" }, { title: "Reason", cell: (x) => x.reason ?? "" },
          { title: "Data", class: "rowtext", cell: (x) => (x.data === null || x.data === undefined ? "" : JSON.stringify(x.data)) }],
        r.rows, { empty: "No rows were dropped." }),
        pager(offset, limit, offset + limit < r.total, (o) => { offset = o; load(); }));
    } catch (e) { box.replaceChildren(h("p", { class: "muted" }, e.message)); }
  };
  await load();
}

// Length histogram, splits and lineage of the snapshot (GET /stats).
async function statsCard(main, ref) {
  const box = h("div", { id: "snapshot-stats" });
  main.append(h("div", { class: "card" }, h("h2", {}, "Lengths, splits and lineage"), box));
  try {
    const s = await get(`/api/datasets/${encodeURIComponent(ref)}/stats`);
    const hist = (s.histogram || []).map((b) => ({ label: `${b.from}–${b.to}`, value: b.rows }));
    box.replaceChildren(
      h("p", {}, `${s.rows} rows · ${s.unit} per row: min ${s.length?.min}, mean ${s.length?.mean}, max ${s.length?.max} · ` +
        Object.entries(s.splits || {}).map(([k, v]) => `${k} ${v.rows} rows`).join(", ") + ` (validation ratio ${s.validation_ratio})`),
      barChart(`rows by length (${s.unit})`, hist),
      h("p", { class: "muted" }, s.lineage ? `derived: ${JSON.stringify(s.lineage)}` : "ingested from a file (no parent snapshot)"));
  } catch (e) { box.replaceChildren(h("p", { class: "muted" }, e.message)); }
}
