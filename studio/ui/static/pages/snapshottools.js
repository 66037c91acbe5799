// A snapshot's tools on its page: curate (the recipe's steps, their options read from the API's own
// CurateSpec schema, as `studio data curate --recipe` takes them), split (ratio, seed) and diff
// against another snapshot (rows removed / changed / added, with examples). Each result is a new
// snapshot or a report shown on the page; the API validates and decides (422 next to a field).
import { get, post } from "../api.js";
import { add, banner, field, fill, h, showError, table } from "../dom.js";
import { toYaml } from "../yaml.js";
import { scalarInput, setPath } from "./experiment.js";

const snapLink = (name, version) =>
  h("a", { href: `#/snapshots/${encodeURIComponent(`${name}@${version}`)}` }, `${name}@${version}`);
const rowText = (row) => (row === null || row === undefined ? "" : JSON.stringify(row));

// Marks the fields a 422 named (``steps.0.near_threshold``) next to their inputs.
function markFields(e, inputs) {
  for (const { field: path, message } of e.fields || []) {
    const f = inputs().find((x) => x.path === path);
    if (f) { f.err.textContent = message; f.el.classList.add("invalid"); }
  }
}

export async function curateCard(ref, name) {
  const schemas = (await get("/api/openapi.json")).components.schemas;
  const stepItems = schemas.CurateSpec.properties.steps.items;
  const types = (stepItems.oneOf || stepItems.anyOf || []).map((r) => schemas[r.$ref.split("/").pop()])
    .map((s) => ({ type: s.properties.type.const ?? s.properties.type.enum?.[0], schema: s,
                   help: s.properties.type.description || "" }));
  const steps = [];  // {type, inputs, box}
  const list = h("div", { id: "curate-steps" });
  const resultName = h("input", { type: "text", id: "curate-name", placeholder: name ? `${name}-curated` : "required for a bare id" });
  const picker = h("select", { id: "curate-add-type" }, types.map((t) => h("option", { value: t.type }, t.type)));
  const yamlBox = h("pre", { id: "curate-yaml" });
  const result = h("div", { id: "curate-result" });
  const run = h("button", { type: "button", id: "curate-run" }, "Curate");
  const inputs = () => steps.flatMap((s) => s.inputs);

  const build = () => {
    let errors = 0;
    const body = { source: ref };
    if (resultName.value.trim()) body.name = resultName.value.trim();
    body.steps = steps.map((s, i) => {
      const out = { type: s.type };
      for (const f of s.inputs) {
        const [value, error] = f.read();
        f.err.textContent = error || "";
        f.el.classList.toggle("invalid", !!error);
        if (error) { errors++; continue; }
        // Only what differs from the step's defaults; an emptied field with a default is null
        // (near_threshold: null — exact duplicates only).
        if (value !== f.dflt && (value !== null || f.nullable)) setPath(out, f.path.split(".").slice(2).join("."), value);
      }
      s.box.querySelector(".step-title").textContent = `${i + 1}. ${s.type}`;
      return out;
    });
    return { body, errors };
  };
  const refresh = () => {
    const { body, errors } = build();
    yamlBox.textContent = `# curate.yaml — studio data curate --recipe curate.yaml\n${toYaml(body)}`;
    run.disabled = errors > 0 || !steps.length;
    run.title = !steps.length ? "add a step first" : errors ? `${errors} field(s) to fix` : "";
  };
  const addStep = (type) => {
    const t = types.find((x) => x.type === type);
    const step = { type, inputs: [], box: null };
    const grid = h("div", { class: "grid" });
    for (const [k, prop] of Object.entries(t.schema.properties)) {
      if (k === "type") continue;
      // A path the 422 names: steps.<index>.<field>; the index is fixed up on removal by rebuilding.
      const f = scalarInput(`steps.${steps.length}.${k}`, prop, schemas, refresh);
      if (f) { step.inputs.push(f); grid.append(f.view); }
    }
    step.box = h("div", { class: "card curate-step", "data-step": type },
      h("div", { class: "row" }, h("strong", { class: "step-title" }, type), h("span", { class: "muted" }, t.help),
        h("button", { type: "button", class: "secondary remove-step", onclick: () => {
          steps.splice(steps.indexOf(step), 1);
          step.box.remove();
          renumber();
        } }, "Remove")), grid);
    steps.push(step);
    list.append(step.box);
    refresh();
  };
  // Field ids and paths follow the step's position (the API's 422 names steps.<i>.<field>).
  const renumber = () => {
    steps.forEach((s, i) => s.inputs.forEach((f) => {
      const rest = f.path.split(".").slice(2).join(".");
      f.path = `steps.${i}.${rest}`;
      f.el.dataset.path = f.path;
      f.el.id = `f-${f.path.replace(/\./g, "-")}`;
    }));
    refresh();
  };
  run.addEventListener("click", async () => {
    banner(null);
    const { body, errors } = build();
    if (errors || !steps.length) return;
    run.disabled = true;
    run.textContent = "Curating…";
    result.replaceChildren();
    try {
      const r = await post("/api/datasets/curate", body);
      fill(result, h("p", { class: "ok", id: "curate-outcome" },
        `${r.created ? "Created" : "Unchanged (same steps on the same rows):"} ${r.name}@${r.version} · ` +
        `${r.rows} rows kept · ${r.dropped} dropped · ${r.redactions} redactions · snapshot ${r.snapshot_id.slice(0, 12)}`),
      h("p", {}, "Open ", snapLink(r.name, r.version), " (its dropped rows list each step's reason) · ",
        h("a", { href: "#", id: "curate-diff", onclick: (ev) => { ev.preventDefault(); diffWith(`${r.name}@${r.version}`); } },
          "diff it against this snapshot")));
    } catch (e) {
      markFields(e, inputs);
      showError(e);
    } finally {
      run.textContent = "Curate";
      refresh();
    }
  });
  let diffWith = () => {};
  const card = h("div", { class: "card", id: "curate-card" }, h("h2", {}, "Curate"),
    h("p", { class: "muted" }, "Steps run in order on every row; the result is a new snapshot with lineage, and every dropped row keeps its step and reason."),
    h("div", { class: "cols" },
      h("div", {}, field("Result name", resultName, "a new version of it"), list,
        h("p", { class: "row" }, picker, h("button", { type: "button", class: "secondary", id: "curate-add",
          onclick: () => addStep(picker.value) }, "+ Add step"), run)),
      h("div", {}, h("h2", {}, "Recipe (YAML)"), yamlBox)),
    result);
  refresh();
  return { card, onDiff: (fn) => { diffWith = fn; } };
}

export function splitCard(ref, name) {
  const ratio = h("input", { type: "number", id: "split-ratio", value: "0.1", min: "0", max: "1", step: "any" });
  const seed = h("input", { type: "number", id: "split-seed", value: "0", step: "1" });
  const base = h("input", { type: "text", id: "split-name", placeholder: name || "required for a bare id" });
  const result = h("div", { id: "split-result" });
  const run = h("button", { type: "submit", id: "split-run" }, "Split");
  const submit = async (ev) => {
    ev.preventDefault();
    banner(null);
    const body = { validation_ratio: Number(ratio.value), seed: Number(seed.value) };
    if (base.value.trim()) body.name = base.value.trim();
    run.disabled = true;
    result.replaceChildren();
    try {
      const r = await post(`/api/datasets/${encodeURIComponent(ref)}/split`, body);
      fill(result, h("p", { class: "ok", id: "split-outcome" },
        ["train", "validation"].flatMap((s) => [snapLink(r[s].name, r[s].version), ` ${r[s].rows} rows`,
          s === "train" ? " · " : ""]),
        ` · seed ${body.seed}, validation ratio ${body.validation_ratio}`));
    } catch (e) {
      for (const { field: path, message } of e.fields || []) {
        const el = { validation_ratio: ratio, seed, name: base }[path.split(".").pop()];
        if (el) { el.classList.add("invalid"); el.title = message; }
      }
      showError(e);
    } finally { run.disabled = false; }
  };
  return h("form", { class: "card", id: "split-card", onsubmit: submit }, h("h2", {}, "Split"),
    h("p", { class: "muted" }, "Materializes NAME-train and NAME-validation by seed and ratio (as studio data split), so a recipe can pin either."),
    h("div", { class: "grid" }, field("Validation ratio", ratio, "0 < ratio < 1"), field("Seed", seed),
      field("Base name", base, "NAME-train / NAME-validation")),
    h("p", {}, run), result);
}

export function diffCard(ref, versions) {
  const other = h("input", { type: "text", id: "diff-other", list: "diff-refs", placeholder: "name@N or snapshot id" });
  const refs = h("datalist", { id: "diff-refs" }, versions.filter((v) => v !== ref).map((v) => h("option", { value: v })));
  const show = h("input", { type: "number", id: "diff-show", value: "5", min: "0", max: "100", step: "1" });
  const result = h("div", { id: "diff-result" });
  const run = h("button", { type: "submit", id: "diff-run" }, "Diff");
  const go = async () => {
    banner(null);
    const b = other.value.trim();
    if (!b) { banner("Name the snapshot to compare with (name@N or a snapshot id)."); return; }
    run.disabled = true;
    result.replaceChildren(h("p", { class: "muted" }, "Comparing…"));
    try {
      const d = await get(`/api/datasets/${encodeURIComponent(ref)}/diff/${encodeURIComponent(b)}?show=${Number(show.value) || 0}`);
      const part = (title, id, rows, n) => h("div", { id }, h("h2", {}, `${title} (${n})`),
        table([{ title: "Row", class: "rowtext", cell: rowText }], rows, { empty: n ? "no examples asked for" : "none" }));
      fill(result, h("p", { id: "diff-summary" },
        `${ref} → ${b}: ${d.common} rows in both · ${d.removed} removed · ${d.changed} changed · ${d.added} added ` +
        `(${d.rows_a} → ${d.rows_b} rows)`),
      part("Removed (only in " + ref + ")", "diff-removed", d.examples_removed, d.removed),
      h("div", { id: "diff-changed" }, h("h2", {}, `Changed (${d.changed}): same prompt, new row`),
        table([{ title: ref, class: "rowtext", cell: (x) => rowText(x.a) }, { title: b, class: "rowtext", cell: (x) => rowText(x.b) }],
          d.examples_changed, { empty: d.changed ? "no examples asked for" : "none" })),
      part("Added (only in " + b + ")", "diff-added", d.examples_added, d.added));
    } catch (e) { result.replaceChildren(); showError(e); } finally { run.disabled = false; }
  };
  const form = h("form", { class: "card", id: "diff-card", onsubmit: (ev) => { ev.preventDefault(); go(); } },
    h("h2", {}, "Diff"),
    h("p", { class: "muted" }, "Rows compared by content; a row whose prompt stayed (chat: its turns before the last) but whose answer changed counts as changed."),
    h("div", { class: "grid" }, field("Compare with", other), field("Examples per part", show)), refs,
    h("p", {}, run), result);
  return { card: form, diffWith: (b) => { other.value = b; go(); form.scrollIntoView(); } };
}

// The download, as every key may: the whole snapshot or one split of it, JSONL or Parquet.
export function exportOptions() {
  const split = h("select", { id: "export-split" }, ["all", "train", "validation"].map((s) => h("option", { value: s }, s)));
  const ratio = h("input", { type: "number", id: "export-ratio", value: "0.1", min: "0", max: "0.99", step: "any", style: "width: 6rem" });
  const seed = h("input", { type: "number", id: "export-seed", value: "0", step: "1", style: "width: 5rem" });
  const query = () => split.value === "all" ? "" :
    `&split=${split.value}&validation_ratio=${Number(ratio.value)}&seed=${Number(seed.value)}`;
  const view = add(h("span", { class: "row" }), "split", split, "ratio", ratio, "seed", seed);
  return { view, query };
}
