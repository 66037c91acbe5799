// Batches: the caller's OpenAI batches (GET /v1/batches, newest first, paged with `after`), each
// with its state, progress (done/total, failed) and job; polled while one is still running. Cancel
// for batches not ended (the API lets only the creator, or an admin, see them at all).
import { get, post } from "../api.js";
import { badge, fmtTime, h, showError, table } from "../dom.js";

const PAGE = 20;
const POLL_MS = 2000;
const ENDED = ["completed", "failed", "expired", "cancelled"];

function progress(b) {
  const c = b.request_counts;
  const done = c.completed + c.failed;
  return h("span", { class: "batch-progress" },
    h("progress", { max: c.total || 1, value: done }), ` ${done}/${c.total}`,
    c.failed ? h("span", { class: "muted" }, ` (${c.failed} failed)`) : null);
}

export async function batchesPage(main) {
  const list = h("div", { id: "batches-list" });
  const cursors = [null]; // the `after` of each page seen: page n starts after cursors[n]
  let page = 0, timer = null, stopped = false;
  const load = async () => {
    clearTimeout(timer);
    let running = false;
    try {
      const after = cursors[page] ? `&after=${encodeURIComponent(cursors[page])}` : "";
      const r = await get(`/v1/batches?limit=${PAGE}${after}`);
      if (stopped) return;
      cursors[page + 1] = r.last_id;
      running = r.data.some((b) => !ENDED.includes(b.status));
      list.replaceChildren(table([
        { title: "Batch", cell: (b) => h("code", {}, b.id) },
        { title: "State", cell: (b) => badge(b.status) },
        { title: "Progress", cell: progress },
        { title: "Endpoint", cell: (b) => b.endpoint },
        { title: "Created", cell: (b) => fmtTime(new Date(b.created_at * 1000).toISOString()) },
        { title: "Job", cell: (b) => h("a", { href: `#/jobs/${b.studio_job_id}` }, `#${b.studio_job_id}`) },
        { title: "Files", cell: (b) => [b.output_file_id, b.error_file_id].filter(Boolean).join(" · ") || "—" },
        { title: "", cell: (b) => ENDED.includes(b.status) || b.status === "cancelling" ? "" : h("button", {
          class: "danger", onclick: async () => {
            try { await post(`/v1/batches/${b.id}/cancel`); await load(); } catch (e) { showError(e); }
          } }, "Cancel") },
      ], r.data, { empty: "No batches yet: upload a JSONL with the openai client or `studio batches create`." }),
      h("div", { class: "pager" },
        h("button", { class: "secondary", disabled: page === 0, onclick: () => { page -= 1; load(); } }, "← Previous"),
        h("span", { class: "muted" }, `page ${page + 1}`),
        h("button", { class: "secondary", disabled: !r.has_more, onclick: () => { page += 1; load(); } }, "Next →")));
    } catch (e) { showError(e); }
    if (!stopped && running) timer = setTimeout(load, POLL_MS);
  };
  main.append(h("h1", {}, "Batches"),
    h("p", { class: "muted" }, "OpenAI Batch API: POST /v1/files (purpose=batch), then POST /v1/batches (docs/batch.md)."),
    list);
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}
