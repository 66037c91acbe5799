// Models: registry names, and a name's versions with lineage (dataset snapshot, job, MLflow run),
// eval scores and stage; promote to champion or archive (the name's owner and admins; only admins
// force past the promotion gate, with a reason the studio records). Every key may download a
// version (its adapter folder and model card as .tar.gz); the owner and admins merge it into its base.
import { isAdmin, ownerNote, owns } from "../access.js";
import { get, post, request } from "../api.js";
import { add, badge, banner, fmtTime, h, pager, saveDownload, showError, table } from "../dom.js";

const PAGE = 25;

export async function modelsPage(main) {
  const list = h("div", { class: "card" });
  let offset = 0;
  const load = async () => {
    try {
      const rows = await get(`/api/models?limit=${PAGE + 1}&offset=${offset}`);
      list.replaceChildren(table([
        { title: "Name", cell: (m) => h("a", { href: `#/models/${encodeURIComponent(m.name)}` }, m.name) },
        { title: "Versions", cell: (m) => m.versions },
        { title: "Champion", cell: (m) => (m.champion_version ? `${m.name}@${m.champion_version}` : "none") },
        { title: "Newest", cell: (m) => `${m.name}@${m.latest_version}` },
        { title: "Method", cell: (m) => m.method }, { title: "Base", cell: (m) => m.base_model },
        { title: "Owner", cell: (m) => m.owner || "—" },
        { title: "Updated", cell: (m) => fmtTime(m.updated_at) },
      ], rows.slice(0, PAGE), { empty: "No registered models yet: a succeeded training job registers one." }),
      pager(offset, PAGE, rows.length > PAGE, (o) => { offset = o; load(); }));
    } catch (e) { showError(e); }
  };
  const deployed = h("div", { id: "deployments" });
  main.append(h("h1", {}, "Models"), list, h("div", { class: "card" }, h("h2", {}, "Deployments"), deployed));
  await Promise.all([load(), deploymentsCard(deployed)]);
}

const dash = (v) => (v === null || v === undefined ? "—" : v);

// Served base models (serve config and runtime deployments) with live figures per deployment.
// State is the reported one (deploying, ready = at least one healthy replica, unhealthy, restoring,
// evicting, evicted, failed); the note says why a model is not ready.
// A studio without Serve (or an older one) answers an error: said in the card, not the banner.
async function deploymentsCard(box) {
  try {
    const rows = await get("/api/deployments");
    box.replaceChildren(table([
      { title: "Model", cell: (d) => d.name }, { title: "From", cell: (d) => dash(d.source) },
      { title: "State", cell: (d) => badge(String(dash(d.status)).toUpperCase()) },
      { title: "Healthy replicas", cell: (d) => dash(d.healthy_replicas ?? d.totals?.replicas) },
      { title: "In flight", cell: (d) => dash(d.in_flight) },
      { title: "Running / waiting", cell: (d) => `${dash(d.totals?.running_requests)} / ${dash(d.totals?.waiting_requests)}` },
      { title: "Memory GiB", cell: (d) => (d.totals?.memory_bytes == null ? "—" : (d.totals.memory_bytes / 2 ** 30).toFixed(2)) },
      { title: "Tokens/s", cell: (d) => (d.totals?.tokens_per_s == null ? "—" : Number(d.totals.tokens_per_s).toFixed(1)) },
      { title: "Adapters loaded", cell: (d) => (d.totals?.adapters_loaded || []).join(", ") || "—" },
      { title: "Note", cell: (d) => d.message || "" },
    ], Array.isArray(rows) ? rows : [], { empty: "No models are deployed." }));
  } catch (e) {
    box.replaceChildren(h("p", { class: "muted", id: "deployments-unavailable" }, e.message));
  }
}

function metricsText(metrics) {
  const entries = Object.entries(metrics || {}).filter(([, v]) => typeof v === "number");
  return entries.length ? entries.map(([k, v]) => `${k} ${Number(v.toPrecision(4))}`).join(" · ") : "—";
}

// Admins may force a promotion past the gate; the API records it with the reason.
function forceControls() {
  const force = h("input", { type: "checkbox", id: "promote-force" });
  const reason = h("input", { type: "text", id: "promote-reason", placeholder: "why (recorded with the promotion)",
    style: "width: 22rem" });
  const view = h("div", { class: "card row", id: "promote-force-box" },
    h("label", {}, force, " force past the promotion gate"), reason);
  // null: the admin asked to force without saying why (the API would refuse it too).
  const body = () => {
    if (!force.checked) return {};
    return reason.value.trim() ? { force: true, reason: reason.value.trim() } : null;
  };
  return { view, body };
}

// The version's .tar.gz, fetched with the key (a plain link could not send it) and handed to the
// browser as a download; a version whose files are gone answers 404 with the reason, shown.
async function download(ref, button) {
  banner(null);
  button.disabled = true;
  try {
    await saveDownload(await request(`/api/models/${encodeURIComponent(ref)}/download`, { raw: true }), `${ref}.tar.gz`);
  } catch (e) { showError(e); } finally { button.disabled = false; }
}

// Merge into the base: a full model in the artifact store; with a base name, also a base model
// recipes and deployments name (the API answers 409 when that name is taken).
function mergeControls() {
  const baseName = h("input", { type: "text", id: "merge-base-name", placeholder: "optional: register as base model NAME",
    style: "width: 22rem" });
  const view = h("div", { class: "card row", id: "merge-box" },
    h("span", {}, "Merge an adapter into its base (safetensors, loadable by transformers and vLLM)"), baseName);
  const merge = async (ref, button) => {
    banner(null);
    button.disabled = true;
    try {
      const body = baseName.value.trim() ? { base_name: baseName.value.trim() } : {};
      const r = await post(`/api/models/${encodeURIComponent(ref)}/merge`, body);
      banner(`${r.ref} merged: ${r.uri}${r.base_model ? ` · base model ${r.base_model} (${r.path})` : ""}`, "info");
    } catch (e) { showError(e); } finally { button.disabled = false; }
  };
  return { view, merge };
}

export async function modelPage(main, name) {
  const box = h("div", {});
  const forcing = isAdmin() ? forceControls() : null;
  const merging = mergeControls();
  add(main, h("p", {}, h("a", { href: "#/models" }, "← all models")), h("h1", {}, `Model ${name}`),
    forcing ? forcing.view : null, box);
  let offset = 0;
  const load = async () => {
    const r = await get(`/api/models/${encodeURIComponent(name)}?newest_first=true&limit=${PAGE + 1}&offset=${offset}`);
    const canPromote = owns(r.owner_key_id);
    const stage = async (ref, to) => {
      banner(null);
      const extra = to === "champion" && forcing ? forcing.body() : {};
      if (extra === null) { banner("Say why you force the promotion (the reason is recorded), or untick force."); return; }
      try {
        const v = await post(`/api/models/${encodeURIComponent(ref)}/promote`, { stage: to, ...extra });
        banner(`${v.ref} is now ${v.stage}.`, "info");
        await load();
      } catch (e) { showError(e); }
    };
    box.replaceChildren(canPromote ? merging.view : null, h("div", { class: "card" },
      canPromote ? null : h("p", {}, ownerNote("promote, archive or merge its versions",
        { id: "promote-owner-note", whose: "the name's owner" })),
      table([
        { title: "Version", cell: (v) => v.ref }, { title: "Stage", cell: (v) => badge(v.stage) },
        { title: "Method", cell: (v) => `${v.method} · ${v.adapter_type}` },
        { title: "Eval / train scores", cell: (v) => metricsText(v.metrics) },
        { title: "Lineage", cell: (v) => h("div", {},
          v.dataset_snapshot_id ? h("div", {}, "data ", h("a", { href: `#/snapshots/${encodeURIComponent(v.dataset_snapshot_id)}` },
            v.dataset_snapshot_id.slice(0, 12))) : null,
          v.job_id ? h("div", {}, "job ", h("a", { href: `#/jobs/${v.job_id}` }, `#${v.job_id}`)) : null,
          // The version's page in the MLflow UI (the registry is mirrored there) and its run's.
          v.mlflow_url ? h("div", {}, h("a", { href: v.mlflow_url, target: "_blank", rel: "noopener", class: "mlflow-version" }, "MLflow version ↗"),
            v.mlflow_run_url ? [" · ", h("a", { href: v.mlflow_run_url, target: "_blank", rel: "noopener", class: "mlflow-run" }, "run ↗")] : null)
            : v.mlflow_run_id ? h("div", { class: "muted" }, `MLflow run ${v.mlflow_run_id}`) : null,
          h("div", { class: "muted" }, `base ${v.base_model}`)) },
        { title: "Created", cell: (v) => fmtTime(v.created_at) },
        { title: "", cell: (v) => h("div", { class: "row" },
          h("button", { class: "secondary download", "data-ref": v.ref, type: "button",
            onclick: (ev) => download(v.ref, ev.currentTarget) }, "Download"),
          canPromote && v.adapter_type !== "full" ? h("button", { class: "secondary merge", "data-ref": v.ref, type: "button",
            onclick: (ev) => merging.merge(v.ref, ev.currentTarget) }, "Merge") : null,
          canPromote && v.stage !== "champion" ? h("button", { class: "promote", "data-ref": v.ref, onclick: () => stage(v.ref, "champion") }, "Promote to champion") : null,
          canPromote && v.stage !== "archived" ? h("button", { class: "danger archive", "data-ref": v.ref, onclick: () => stage(v.ref, "archived") }, "Archive") : null) },
      ], r.versions.slice(0, PAGE))),
    pager(offset, PAGE, r.versions.length > PAGE, (o) => { offset = o; load().catch(showError); }));
  };
  try { await load(); } catch (e) { showError(e); }
}
