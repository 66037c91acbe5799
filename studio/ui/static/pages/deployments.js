// The models page's deployments: every served base model with its live state, polled (deploying /
// restoring / ready / unhealthy / evicting / evicted / failed with why), and for admin keys the
// recipe form of `studio serve deploy` (fields, defaults, help and limits read from the API's own
// ServingRecipe schema; the API validates again), Evict and Restart. A model serving an arm of an
// active A/B experiment is not evicted: the API's 409 names the experiment, shown in the banner.
import { isAdmin } from "../access.js";
import { get, post, request } from "../api.js";
import { badge, banner, fill, h, showError, table } from "../dom.js";
import { toYaml } from "../yaml.js";
import { scalarInput, setPath } from "./experiment.js";

const POLL_MS = 3000;
// The recipe fields the form offers (the rest keep their defaults; a YAML recipe with
// `studio serve deploy` sets any of them).
const FIELDS = [
  "name", "deployment.engine.model", "deployment.engine.engine", "deployment.engine.dtype",
  "deployment.engine.max_model_len", "deployment.engine.max_num_seqs", "deployment.engine.max_loras",
  "deployment.engine.max_lora_rank", "deployment.engine.kv_cache_space_gib", "deployment.engine.enforce_eager",
  "deployment.num_replicas", "deployment.num_cpus", "deployment.num_gpus", "deployment.memory_gib",
  "evict_idle", "idle_s", "deploy_timeout_s",
];
const BUSY = new Set(["deploying", "restoring", "evicting"]);
const dash = (v) => (v === null || v === undefined ? "—" : v);

// The property of a dotted path in the ServingRecipe schema (through $refs and nullable unions).
function propOf(schemas, path) {
  let schema = schemas.ServingRecipe, prop = null;
  for (const key of path.split(".")) {
    prop = schema?.properties?.[key];
    if (!prop) return null;
    const ref = prop.$ref || prop.anyOf?.find((x) => x.$ref)?.$ref;
    schema = ref ? schemas[ref.split("/").pop()] : prop;
  }
  return prop;
}

function deployForm(schemas, onDeploy) {
  const inputs = FIELDS.map((path) => {
    const prop = propOf(schemas, path);
    return prop ? scalarInput(path, prop, schemas, () => refresh()) : null;
  }).filter(Boolean);
  const byPath = (p) => inputs.find((f) => f.path === p);
  const yamlBox = h("pre", { class: "yaml", id: "deploy-yaml" });
  const submit = h("button", { type: "button", id: "deploy-submit" }, "Deploy");
  const build = () => {
    const out = {};
    let errors = 0;
    for (const f of inputs) {
      const [value, error] = f.read();
      f.err.textContent = error || "";
      f.el.classList.toggle("invalid", !!error);
      if (error) { errors++; continue; }
      if (value === null || value === f.dflt) continue;
      setPath(out, f.path, value);
    }
    return { out, errors };
  };
  const refresh = () => {
    const { out, errors } = build();
    yamlBox.textContent = `# studio serve deploy ${out.name || "recipe"}.yaml\n${toYaml(out)}`;
    submit.disabled = errors > 0;
    submit.title = errors ? `${errors} field(s) to fix` : "";
    return out;
  };
  // A 422's fields are marked next to their inputs (the banner says it in words too).
  const mark = (e) => {
    for (const { field: path, message } of e.fields || []) {
      const f = byPath(path);
      if (f) { f.err.textContent = message; f.el.classList.add("invalid"); }
    }
  };
  submit.addEventListener("click", async () => {
    banner(null);
    const body = refresh();
    if (submit.disabled) return;
    submit.disabled = true;
    try { await onDeploy(body, mark); } finally { submit.disabled = false; }
  });
  const view = h("details", { class: "card", id: "deploy-box" },
    h("summary", {}, h("strong", {}, "Deploy a base model")),
    h("p", { class: "muted" }, "A serving recipe, as `studio serve deploy` reads it; the deploy answers once the model serves " +
      "(its state below meanwhile)."),
    h("div", { class: "grid" }, inputs.map((f) => f.view)),
    h("h2", {}, "Recipe (YAML)"), yamlBox, h("p", {}, submit));
  refresh();
  return view;
}

// The card: the deploy form (admins), then the table, refreshed every few seconds. Returns a stop().
export async function deploymentsCard(box) {
  const admin = isAdmin();
  const list = h("div", { id: "deployments" }, h("p", { class: "muted" }, "Loading…"));
  const pending = new Map(); // name → what this page asked for ("deploying", "restarting", "evicting")
  let timer = null, stopped = false;
  const act = async (name, what, call, onError = () => {}) => {
    banner(null);
    pending.set(name, what);
    load();
    try {
      const row = await call();
      banner(`${name}: ${row.status}${row.message ? ` (${row.message})` : ""}`, "info");
    } catch (e) { onError(e); showError(e); } finally {
      pending.delete(name);
      load();
    }
  };
  const actions = (d) => {
    if (d.source !== "runtime") return h("span", { class: "muted" }, "serve config");
    if (!admin) return null;
    if (pending.has(d.name) || BUSY.has(d.status)) return h("span", { class: "muted busy" }, `${pending.get(d.name) || d.status}…`);
    const enc = encodeURIComponent(d.name);
    return h("div", { class: "row" },
      h("button", { class: "secondary restart", "data-name": d.name, type: "button",
        onclick: () => act(d.name, "restarting", () => post(`/api/deployments/${enc}/restart`, {})) },
      d.status === "evicted" || d.status === "failed" ? "Deploy again" : "Restart"),
      d.status === "evicted" ? null : h("button", { class: "danger evict", "data-name": d.name, type: "button",
        onclick: () => act(d.name, "evicting", () => request(`/api/deployments/${enc}`, { method: "DELETE" })) }, "Evict"));
  };
  const load = async () => {
    if (stopped) return;
    clearTimeout(timer);
    try {
      const rows = await get("/api/deployments");
      fill(list, table([
        { title: "Model", cell: (d) => d.name }, { title: "From", cell: (d) => dash(d.source) },
        { title: "State", cell: (d) => badge(String(dash(d.status)).toUpperCase()) },
        { title: "Healthy replicas", cell: (d) => dash(d.healthy_replicas ?? d.totals?.replicas) },
        { title: "In flight", cell: (d) => dash(d.in_flight) },
        { title: "Running / waiting", cell: (d) => `${dash(d.totals?.running_requests)} / ${dash(d.totals?.waiting_requests)}` },
        { title: "Memory GiB", cell: (d) => (d.totals?.memory_bytes == null ? "—" : (d.totals.memory_bytes / 2 ** 30).toFixed(2)) },
        { title: "Tokens/s", cell: (d) => (d.totals?.tokens_per_s == null ? "—" : Number(d.totals.tokens_per_s).toFixed(1)) },
        { title: "Adapters loaded", cell: (d) => (d.totals?.adapters_loaded || []).join(", ") || "—" },
        { title: "Note", cell: (d) => h("span", { class: "note" }, d.message || "") },
        { title: "", cell: actions },
      ], Array.isArray(rows) ? rows : [], { empty: "No models are deployed." }));
      for (const tr of list.querySelectorAll("tbody tr")) tr.dataset.name = tr.firstChild.textContent;
    } catch (e) {
      // A studio without Serve (or an older one) answers an error: said in the card, not the banner.
      fill(list, h("p", { class: "muted", id: "deployments-unavailable" }, e.message));
    }
    if (!stopped) timer = setTimeout(load, POLL_MS);
  };
  let form = null;
  if (admin) {
    try {
      const openapi = await get("/api/openapi.json");
      form = deployForm(openapi.components.schemas, (body, mark) =>
        act(body.name || "?", "deploying", () => post("/api/deployments", body), mark));
    } catch (e) { showError(e); }
  }
  fill(box, h("h2", {}, "Deployments"), form,
    admin ? null : h("p", { class: "muted", id: "deploy-admin-note" }, "only an admin can deploy, evict or restart models"),
    list);
  await load();
  return () => { stopped = true; clearTimeout(timer); };
}
