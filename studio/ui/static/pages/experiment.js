// New experiment: a form built from the API's own TrainSpec schema (/api/openapi.json), so the
// fields, defaults, help texts and limits are the server's; the server validates again on submit
// (422 per field, 400 preflight) and its errors land next to the field or in the banner.
import { get, post } from "../api.js";
import { banner, field, h, showError } from "../dom.js";
import { toYaml } from "../yaml.js";
import { sweepCard } from "./sweep.js";

// Which dataset kinds each method trains on (studio.train.spec.METHOD_KINDS): only a filter for
// the dataset suggestions; the server's preflight is the check.
const METHOD_KINDS = { cpt: ["text"], sft: ["chat", "prompt_completion"], dpo: ["preference"],
                       grpo: ["prompt_completion", "chat"] };
// Rows exact match can score (studio.train.preflight.EVAL_AFTER_KINDS): the eval_after suggestions.
const EVAL_AFTER_KINDS = ["prompt_completion", "chat"];
// [spec key, title, shown for]. A section the recipe may leave out (eval, eval_after: nullable in
// TrainSpec) is sent only once one of its fields is set; until then its required fields are not asked.
const SECTIONS = [
  ["lora", "LoRA", (s) => s.adapter !== "full"],
  ["hyper", "Hyperparameters", () => true],
  ["resources", "Resources", () => true],
  ["checkpoint", "Checkpoints", () => true],
  ["eval", "Validation", () => true],  // eval_loss during training: what a sweep ranks its trials by
  ["eval_after", "After training (eval_after)", () => true],  // exact match: the other sweep metric
  ["dpo", "DPO", (s) => s.method === "dpo"],
  ["grpo", "GRPO", (s) => s.method === "grpo"],
];

function deref(schemas, prop) {
  let nullable = false, p = prop;
  if (p.anyOf) {
    const rest = p.anyOf.filter((x) => x.type !== "null");
    nullable = rest.length < p.anyOf.length;
    if (rest.length !== 1) return null; // a union the form cannot edit (e.g. target_modules)
    p = { ...rest[0], description: prop.description, default: prop.default };
  }
  if (p.$ref) p = { ...schemas[p.$ref.split("/").pop()], description: prop.description, default: prop.default };
  return { ...p, nullable };
}

// One scalar input with inline validation; returns {path, el, read(): [value, error]} or null
// (also the curation steps' fields on a snapshot's page).
export function scalarInput(path, prop, schemas, onChange) {
  const p = deref(schemas, prop);
  if (!p || p.type === "object" || p.type === "array" || p.properties) return null;
  const dflt = prop.default ?? p.default ?? null;
  const enumValues = p.enum || (p.const !== undefined ? [p.const] : null);
  let el;
  if (enumValues) {
    el = h("select", {}, (p.nullable ? [null, ...enumValues] : enumValues).map((v) =>
      h("option", { value: v === null ? "" : String(v) }, v === null ? "(default)" : String(v))));
    el.value = dflt === null ? "" : String(dflt);
  } else if (p.type === "boolean") {
    el = h("select", {}, (p.nullable ? ["", "true", "false"] : ["true", "false"]).map((v) =>
      h("option", { value: v }, v === "" ? "(auto)" : v)));
    el.value = dflt === null ? "" : String(dflt);
  } else {
    el = h("input", { type: p.type === "integer" || p.type === "number" ? "number" : "text",
                      step: p.type === "integer" ? "1" : "any", value: dflt === null ? "" : String(dflt),
                      placeholder: dflt === null ? "(none)" : "" });
  }
  el.dataset.path = path;
  el.id = `f-${path.replace(/\./g, "-")}`;
  const err = h("div", { class: "field-error", "data-error-for": path });
  const required = dflt === null && !p.nullable && !("default" in prop);
  const read = () => {
    const raw = el.value.trim();
    if (raw === "") return required ? [undefined, "required"] : [null, null];
    if (enumValues) {
      const v = enumValues.find((x) => String(x) === raw);
      return [v, null];
    }
    if (p.type === "boolean") return [raw === "true", null];
    if (p.type === "integer" || p.type === "number") {
      const v = Number(raw);
      if (!Number.isFinite(v)) return [undefined, "must be a number"];
      if (p.type === "integer" && !Number.isInteger(v)) return [undefined, "must be a whole number"];
      if (p.minimum !== undefined && v < p.minimum) return [undefined, `must be ≥ ${p.minimum}`];
      if (p.exclusiveMinimum !== undefined && v <= p.exclusiveMinimum) return [undefined, `must be > ${p.exclusiveMinimum}`];
      if (p.maximum !== undefined && v > p.maximum) return [undefined, `must be ≤ ${p.maximum}`];
      if (p.exclusiveMaximum !== undefined && v >= p.exclusiveMaximum) return [undefined, `must be < ${p.exclusiveMaximum}`];
      return [v, null];
    }
    if (p.pattern && !new RegExp(p.pattern).test(raw)) return [undefined, `must match ${p.pattern}`];
    return [raw, null];
  };
  el.addEventListener("input", onChange);
  el.addEventListener("change", onChange);
  const label = path.split(".").pop();
  return { path, dflt, nullable: p.nullable, read, err, el, view: h("div", {}, field(label, el, prop.description || p.description), err) };
}

// The recipe field a preflight refusal opens with ("eval_after.dataset: no dataset named …",
// "eval.dataset 'x' holds text rows …"), to mark it where it was typed.
function namedField(message) {
  return /^([a-z_]+(?:\.[a-z_]+)+)[: ]/.exec(message || "")?.[1];
}

// A refusal's fields marked where they were typed (``mark(path, message)``): each field of a 422,
// else the recipe field a preflight's 4xx opens with.
export function markRefused(e, mark) {
  for (const { field: path, message } of e.fields || []) mark(path, message);
  const named = !e.fields?.length && namedField(e.message);
  if (named) mark(named, e.message.split(". Fix:")[0]);
}

// Post a form's body as a new job: the button busy meanwhile, then the job's page. A refusal is
// marked in the form (``mark``), said in the banner and returned; the form is kept.
export async function submitJob(button, url, body, label, mark) {
  button.disabled = true;
  button.textContent = "Submitting…";
  try {
    const job = await post(url, body);
    location.hash = `#/jobs/${job.id}`;
    return null;
  } catch (e) {
    markRefused(e, mark);
    showError(e);
    button.disabled = false;
    return e;
  } finally {
    button.textContent = label;
  }
}

export function setPath(obj, path, value) {
  const keys = path.split(".");
  let o = obj;
  for (const k of keys.slice(0, -1)) o = o[k] = o[k] || {};
  o[keys[keys.length - 1]] = value;
}

export async function experimentPage(main) {
  const [openapi, datasets, models] = await Promise.all([
    get("/api/openapi.json"), get("/api/datasets?limit=500"), get("/api/models?limit=200")]);
  const schemas = openapi.components.schemas;
  const spec = schemas.TrainSpec;
  const inputs = [];
  const yamlBox = h("pre", { id: "recipe-yaml" });
  const cliBox = h("pre", { id: "recipe-cli" });
  const submit = h("button", { id: "submit-job" }, "Start training job");
  const planButton = h("button", { id: "plan-job", class: "secondary" }, "Plan");
  const planBox = h("div", { id: "plan-panel" }, h("p", { class: "muted" },
    "What the run will need and take (POST /api/jobs/plan): nothing is queued."));
  const form = h("div", {});
  const state = { method: "sft", adapter: "lora" };

  const add = (path, prop, into) => {
    const f = scalarInput(path, prop, schemas, refresh);
    if (f) { inputs.push(f); into.append(f.view); }
    return f;
  };
  const basics = h("div", { class: "grid" });
  for (const key of ["name", "method", "base_model", "adapter", "max_retries"]) add(key, spec.properties[key], basics);
  const data = h("div", { class: "grid" });
  const dataSchema = schemas.DataSpec.properties;
  for (const key of Object.keys(dataSchema)) add(`data.${key}`, dataSchema[key], data);
  const byPath = (p) => inputs.find((f) => f.path === p);
  byPath("method").el.value = "sft";
  // Suggestions only: any base path or hub id, and any dataset ref (name, name@N, id) is allowed.
  const baseList = h("datalist", { id: "base-models" },
    [...new Set(models.map((m) => m.base_model))].map((b) => h("option", { value: b })));
  byPath("base_model").el.setAttribute("list", "base-models");
  const dsList = h("datalist", { id: "dataset-refs" });
  byPath("data.dataset").el.setAttribute("list", "dataset-refs");
  const fillDatasets = () => dsList.replaceChildren(...datasets
    .filter((d) => (METHOD_KINDS[state.method] || []).includes(d.kind))
    .map((d) => h("option", { value: `${d.name}@${d.version}` }, `${d.kind} · ${d.rows} rows`)));
  const sectionBoxes = SECTIONS.map(([key, title, shown]) => {
    const ref = deref(schemas, spec.properties[key]);
    const grid = h("div", { class: "grid" });
    for (const [k, prop] of Object.entries(ref.properties || {})) add(`${key}.${k}`, prop, grid);
    const box = h("div", { class: "card", "data-section": key }, h("h2", {}, title),
      ref.nullable ? h("p", { class: "muted" }, `${spec.properties[key].description} Empty: left out.`) : "", grid);
    return { key, shown, box, optional: ref.nullable };
  });
  const evalAfterList = h("datalist", { id: "eval-after-refs" }, datasets
    .filter((d) => EVAL_AFTER_KINDS.includes(d.kind))
    .map((d) => h("option", { value: `${d.name}@${d.version}` }, `${d.kind} · ${d.rows} rows`)));
  byPath("eval_after.dataset").el.setAttribute("list", "eval-after-refs");
  form.append(h("div", { class: "card" }, h("h2", {}, "Model and method"), basics, baseList),
    h("div", { class: "card" }, h("h2", {}, "Data"), data, dsList), ...sectionBoxes.map((s) => s.box), evalAfterList);

  // A field left empty or at its default.
  const untouched = (f) => ["", f.dflt === null ? "" : String(f.dflt)].includes(f.el.value.trim());
  // The sections not sent: hidden for this method/adapter, or optional with no field set.
  const sectionsOff = () => new Set(sectionBoxes.filter((s) => !s.shown(state) ||
    (s.optional && inputs.filter((f) => f.path.startsWith(`${s.key}.`)).every(untouched))).map((s) => s.key));

  function build() {
    const out = {};
    let errors = 0;
    const off = sectionsOff();
    for (const f of inputs) {
      const active = !off.has(f.path.split(".")[0]);
      const [value, error] = active ? f.read() : [null, null];
      f.err.textContent = error || "";
      f.el.classList.toggle("invalid", !!error);
      if (error) { errors++; continue; }
      // Only what differs from the defaults (required fields have none): the recipe reads like
      // one written by hand.
      if (!active || value === null || value === f.dflt) continue;
      setPath(out, f.path, value);
    }
    return { out, errors };
  }

  // A 422's fields marked where they were typed (the form's paths are the recipe's).
  function markField(path, message) {
    const f = byPath(path);
    if (f) { f.err.textContent = message; f.el.classList.add("invalid"); }
  }
  const sweep = sweepCard(schemas, build, markField);

  function refresh() {
    state.method = byPath("method").el.value;
    state.adapter = byPath("adapter").el.value;
    for (const s of sectionBoxes) s.box.hidden = !s.shown(state);
    fillDatasets();
    const { out, errors } = build();
    const file = `${out.name || "recipe"}.yaml`;
    yamlBox.textContent = `# studio train submit ${file}\n${toYaml(out)}`;
    cliBox.textContent = `studio train submit ${file}\n\n# or over HTTP:\ncurl -X POST ${location.origin}/api/jobs \\\n` +
      `  -H "Authorization: Bearer $STUDIO_KEY" -H "Content-Type: application/json" \\\n  -d '${JSON.stringify(out)}'`;
    submit.disabled = planButton.disabled = errors > 0;
    submit.title = planButton.title = errors ? `${errors} field(s) to fix` : "";
    sweep.refresh();
    return out;
  }

  planButton.addEventListener("click", async () => {
    banner(null);
    const body = refresh();
    if (planButton.disabled) return;
    planButton.disabled = true;
    planBox.replaceChildren(h("p", { class: "muted" }, "Planning…"));
    try {
      planBox.replaceChildren(planView(await post("/api/jobs/plan", body)));
    } catch (e) {
      markRefused(e, markField);
      planBox.replaceChildren(h("p", { class: "field-error" }, e.message || String(e)));
      showError(e);
    } finally {
      planButton.disabled = false;
    }
  });

  submit.addEventListener("click", async () => {
    banner(null);
    const body = refresh();
    if (!submit.disabled) await submitJob(submit, "/api/jobs", body, "Start training job", markField);
  });

  main.append(h("h1", {}, "New experiment"),
    h("div", { class: "cols" }, form,
      h("div", {}, h("div", { class: "card" }, h("h2", {}, "Recipe (YAML)"), yamlBox,
        h("h2", {}, "Equivalent command"), cliBox, h("div", {}, planButton, " ", submit)),
        h("div", { class: "card" }, h("h2", {}, "Plan"), planBox), sweep.view)));
  refresh();
}

const num = (x) => Number(x).toLocaleString("en-US", { maximumFractionDigits: 1 });

// The plan (studio.train.plan.TrainPlan) as a short table, the verdict and the knobs to turn.
function planView(p) {
  const m = p.memory;
  const rows = [
    ["parameters trained", `${num(p.params_trained)} of ${num(p.model.params_total)} (${(100 * p.trained_share).toFixed(2)} %)`],
    [`peak memory per worker (${m.device === "gpu" ? "GPU memory" : "RSS"})`, `${num(m.total_mb)} MiB`],
    ["", `runtime ${num(m.runtime_mb)} · weights ${num(m.weights_mb)} · LoRA ${num(m.trained_mb)} · gradients ` +
         `${num(m.gradients_mb)} · optimizer ${num(m.optimizer_mb)} · activations ${num(m.activations_mb)} · data ${num(m.data_mb)}`],
    ["data", `${num(p.rows)} rows, ${num(p.tokens)} tokens${p.tokens_estimated ? " (estimated)" : ""}, longest ${p.seq_length}`],
    ["steps", `${num(p.steps)} on ${p.num_workers} worker(s), ${num(p.tokens_to_train)} tokens to train`],
    ["wall time", p.wall_s == null ? "unknown (no earlier job on this base model recorded tokens/s)"
      : `~${num(p.wall_s / 60)} min at ${num(p.tokens_per_s)} tokens/s`],
  ];
  return h("div", {},
    h("table", {}, h("tbody", {}, rows.map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", {}, v))))),
    h("p", { id: "plan-fit", class: p.fit.fits ? "ok" : "field-error" },
      `${p.fit.fits ? "Fits" : "Does not fit"}: ${p.fit.reason}`),
    p.fit.knobs.length ? h("ul", { id: "plan-knobs" }, p.fit.knobs.map((k) => h("li", {}, `try ${k}`))) : "");
}
