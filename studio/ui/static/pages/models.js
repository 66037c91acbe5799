// Models: registry names, and a name's versions with lineage (dataset snapshot, job, MLflow run),
// eval scores and stage; promote to champion or archive (the name's owner and admins; only admins
// force past the promotion gate, with a reason the studio records). Every key may download a
// version (its adapter folder and model card as .tar.gz); the owner and admins merge it into its base.
// The name's promotion gate and each promotion's verdict per check are pages/gate.js; the served
// base models (deploy, evict, restart, live state) pages/deployments.js.
import { ownerNote, owns } from "../access.js";
import { get, post, request } from "../api.js";
import { add, badge, banner, fmtTime, h, pager, saveDownload, showError, table } from "../dom.js";
import { deploymentsCard } from "./deployments.js";
import { adminOverrides, gateCard, verdictView } from "./gate.js";

const PAGE = 25;

export async function modelsPage(main) {
  const list = h("div", { class: "card" }, h("p", { class: "muted" }, "Loading…"));
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
    } catch (e) {
      list.replaceChildren(h("p", { class: "muted", id: "models-error" }, `The models could not be read: ${e.message}`));
      showError(e);
    }
  };
  const deployed = h("div", { class: "card", id: "deployments-box" });
  main.append(h("h1", {}, "Models"), list, deployed);
  const [, stop] = await Promise.all([load(), deploymentsCard(deployed)]);
  return stop;
}

function metricsText(metrics) {
  const entries = Object.entries(metrics || {}).filter(([, v]) => typeof v === "number");
  return entries.length ? entries.map(([k, v]) => `${k} ${Number(v.toPrecision(4))}`).join(" · ") : "—";
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
  const forcing = adminOverrides();
  const merging = mergeControls();
  const verdict = h("div", { id: "verdict-box" });
  let gate = null;
  add(main, h("p", {}, h("a", { href: "#/models" }, "← all models")), h("h1", {}, `Model ${name}`),
    forcing ? forcing.view : null, verdict, box);
  let offset = 0;
  const load = async () => {
    const r = await get(`/api/models/${encodeURIComponent(name)}?newest_first=true&limit=${PAGE + 1}&offset=${offset}`);
    const canPromote = owns(r.owner_key_id);
    if (!gate) { gate = gateCard(name, canPromote); main.append(gate.view); await gate.load(); }
    const stage = async (ref, to) => {
      banner(null);
      const extra = to === "champion" && forcing ? forcing.body() : {};
      if (extra === null) return;  // said in the banner and next to the fields
      try {
        const v = await post(`/api/models/${encodeURIComponent(ref)}/promote`, { stage: to, ...extra });
        if (v.promotion) verdict.replaceChildren(verdictView({ ref, ...v.promotion }));
        banner(v.stage ? `${v.ref} is now ${v.stage}.` : `${ref} is not promoted yet: ${v.promotion.reason}; promote again once the eval is done.`, "info");
        await load();
        await gate.load();
      } catch (e) {
        if (e.body?.promotion) { verdict.replaceChildren(verdictView(e.body.promotion)); gate.load().catch(showError); }
        showError(e);
      }
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
