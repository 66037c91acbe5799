// A sweep started from the New experiment page: the recipe the form builds is the sweep's `train`;
// the search space is rows of recipe field → domain, and the sweep's settings (trials, search,
// metric, scheduler, ASHA, trials at once) are read from the API's own SweepSpec schema. The
// server checks the space (the field exists, the domain can be sampled) and its 4xx, naming the
// field and the fix, lands in the banner with the form left as it was (docs/training.md, "Sweeps").
import { banner, h } from "../dom.js";
import { toYaml } from "../yaml.js";
import { scalarInput, setPath, submitJob } from "./experiment.js";

// What a trial may not vary (studio.train.sweep.FIXED): left out of the field suggestions only.
const FIXED = ["name", "method", "base_model", "data.dataset", "max_retries"];
const SETTINGS = ["num_trials", "search", "metric", "mode", "scheduler", "max_concurrent_trials", "seed"];

// Every dotted leaf field of a recipe, read from the TrainSpec schema (studio.train.sweep.recipe_fields).
function recipeFields(schemas, schema, prefix = "") {
  const out = [];
  for (const [key, prop] of Object.entries(schema.properties || {})) {
    const ref = (prop.anyOf || [prop]).map((p) => p.$ref).find(Boolean);
    const sub = ref && schemas[ref.split("/").pop()];
    if (sub && sub.properties) out.push(...recipeFields(schemas, sub, `${prefix}${key}.`));
    else out.push(`${prefix}${key}`);
  }
  return out;
}

// The sweep card. `recipe()` is the form's recipe ({out, errors}); `markRecipe(path, message)`
// marks one of the form's fields (a 422 on `train.…`). Returns {view, refresh}.
export function sweepCard(schemas, recipe, markRecipe) {
  const rows = h("div", { id: "sweep-space" });
  const fields = h("datalist", { id: "recipe-fields" }, recipeFields(schemas, schemas.TrainSpec)
    .filter((f) => !FIXED.includes(f)).map((f) => h("option", { value: f })));
  const settings = [];
  const grid = h("div", { class: "grid" });
  const ashaGrid = h("div", { class: "grid" });
  const ashaBox = h("div", { id: "sweep-asha" }, h("h2", {}, "ASHA"), ashaGrid);
  const add = (path, prop, into) => {
    const f = scalarInput(`sweep.${path}`, prop, schemas, refresh);
    if (f) { settings.push(f); into.append(f.view); }
  };
  for (const key of SETTINGS) add(key, schemas.SweepSpec.properties[key], grid);
  for (const [key, prop] of Object.entries(schemas.AshaSpec.properties)) add(`asha.${key}`, prop, ashaGrid);
  const byPath = (p) => settings.find((f) => f.path === `sweep.${p}`);
  const yamlBox = h("pre", { id: "sweep-yaml" });
  const submit = h("button", { id: "submit-sweep" }, "Start sweep");

  const addRow = (path = "", domain = "") => {
    const row = h("div", { class: "row space-row" },
      h("input", { type: "text", class: "space-field", value: path, list: "recipe-fields",
                   placeholder: "recipe field, e.g. lora.r", style: "width: 14rem", oninput: refresh }),
      h("input", { type: "text", class: "space-domain", value: domain, placeholder: "choice([4, 8, 16])",
                   style: "width: 13rem", oninput: refresh }),
      h("button", { type: "button", class: "secondary", title: "remove this field",
                    onclick: () => { row.remove(); refresh(); } }, "×"));
    rows.append(row);
    refresh();
  };

  function build() {
    const { out: train, errors: recipeErrors } = recipe();
    const body = { train, space: {} };
    let errors = 0;
    for (const row of rows.querySelectorAll(".space-row")) {
      const path = row.querySelector(".space-field").value.trim();
      const domain = row.querySelector(".space-domain").value.trim();
      row.querySelectorAll("input").forEach((el) => el.classList.remove("invalid"));
      if (path || domain) body.space[path] = domain;  // half a row is the API's to name
    }
    const scheduler = byPath("scheduler").read()[0];
    ashaBox.hidden = scheduler !== "asha";
    for (const f of settings) {
      const active = !f.path.startsWith("sweep.asha.") || scheduler === "asha";
      const [value, error] = active ? f.read() : [null, null];
      f.err.textContent = error || "";
      f.el.classList.toggle("invalid", !!error);
      if (error) { errors++; continue; }
      if (!active || value === null || value === f.dflt) continue;  // the schema's default
      setPath(body, f.path.slice("sweep.".length), value);
    }
    return { body, errors, recipeErrors };
  }

  function refresh() {
    const { body, errors, recipeErrors } = build();
    const file = `${body.train.name || "recipe"}-sweep.yaml`;
    yamlBox.textContent = `# studio train sweep ${file}\n# or: POST ${location.origin}/api/jobs/sweep with these ` +
      `fields as JSON\n${toYaml(body)}`;
    submit.disabled = errors + recipeErrors > 0;
    submit.title = submit.disabled ? `${errors + recipeErrors} field(s) to fix (the recipe's and the sweep's)` : "";
    return body;
  }

  // A refused field: a recipe field (`train.…`, or one a preflight names) in the form above, a
  // setting of the sweep in this card.
  function mark(path, message) {
    const f = path.startsWith("train.") ? null : byPath(path);
    if (f) { f.err.textContent = message; f.el.classList.add("invalid"); } else markRecipe(path.replace(/^train\./, ""), message);
  }

  submit.addEventListener("click", async () => {
    banner(null);
    const body = refresh();
    if (submit.disabled) return;
    const e = await submitJob(submit, "/api/jobs/sweep", body, "Start sweep", mark);
    // A refused space field (400 "space.FIELD: …"): its row is marked too.
    const named = e && /^space\.([^:]+):/.exec(e.message || "")?.[1];
    for (const row of rows.querySelectorAll(".space-row")) {
      if (named && row.querySelector(".space-field").value.trim() === named) {
        row.querySelectorAll("input").forEach((el) => el.classList.add("invalid"));
      }
    }
  });

  const view = h("div", { class: "card", id: "sweep-card" }, h("h2", {}, "Sweep (Ray Tune)"),
    h("p", { class: "muted" }, "Or search this recipe's fields: each trial is a training job of the recipe with " +
      "sampled values; the best trial by the metric is registered (POST /api/jobs/sweep). eval_loss needs " +
      "the recipe's Validation (eval.split_ratio or eval.dataset); exact_match its After training " +
      "(eval_after.dataset)."),
    h("label", {}, "Search space", h("span", { class: "help" },
      "recipe field and domain: uniform(low, high), loguniform(low, high), randint(low, high), choice([a, b])")),
    rows, fields,
    h("p", {}, h("button", { type: "button", class: "secondary", id: "add-space-row", onclick: () => addRow() }, "+ Field")),
    grid, ashaBox,
    h("h2", {}, "Sweep (YAML)"), yamlBox, h("div", {}, submit));
  addRow("hyper.learning_rate", "loguniform(8e-4, 3e-3)");  // configs/sweeps/reverse_tiny_lr.yaml's space
  return { view, refresh };
}
