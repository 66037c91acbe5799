// Compare training runs (#/compare/12,15,…, opened from the jobs list): GET /api/jobs/compare —
// the recipes side by side with the differing fields highlighted, every loss series overlaid (one
// line per run), final metrics, wall time, tokens/s, peak memory, and the eval scores of the versions
// the runs registered. A number a run did not record is "—".
import { get } from "../api.js";
import { overlayChart } from "../chart.js";
import { badge, h, showError } from "../dom.js";

const COLORS = ["#2f5bd3", "#c2410c", "#15803d", "#7c3aed", "#b91c1c", "#0e7490", "#a16207", "#be185d"];

const num = (v) => (v === null || v === undefined ? "—" : Number(Number(v).toPrecision(4)).toString());

function duration(s) {
  if (s === null || s === undefined) return "—";
  const r = Math.round(s);
  if (r < 60) return `${r}s`;
  if (r < 3600) return `${Math.floor(r / 60)}m${String(r % 60).padStart(2, "0")}s`;
  return `${Math.floor(r / 3600)}h${String(Math.floor((r % 3600) / 60)).padStart(2, "0")}m`;
}

// One chart per series name: a line per run that logged it (chart.js's overlayChart).
function runsChart(key, runs) {
  const lines = runs.map((r, i) => ({ id: r.id, color: COLORS[i % COLORS.length], points: r.curves[key] || [] }))
    .filter((l) => l.points.length);
  return overlayChart(key, lines, num);
}

// Rows of label → one cell per run.
function sideBySide(id, runs, rows, { rowClass } = {}) {
  return h("table", { id, class: "compare" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), runs.map((r) => h("th", {}, h("a", { href: `#/jobs/${r.id}` }, `#${r.id}`), ` ${r.name}`)))),
    h("tbody", {}, rows.map((row) => h("tr", { class: rowClass ? rowClass(row) : null, "data-key": row.label },
      h("th", {}, row.label), row.cells.map((c) => h("td", {}, c))))));
}

const show = (v) => (v === null || v === undefined ? "—" : typeof v === "object" ? JSON.stringify(v) : String(v));

export async function comparePage(main, idsText) {
  const ids = idsText.split(",").filter(Boolean);
  main.append(h("p", {}, h("a", { href: "#/jobs" }, "← all jobs")), h("h1", {}, `Compare runs ${ids.map((i) => `#${i}`).join(" · ")}`));
  let c;
  try {
    c = await get(`/api/jobs/compare?ids=${ids.map(encodeURIComponent).join(",")}`);
  } catch (e) {
    showError(e);
    return;
  }
  const runs = c.runs;
  const overview = sideBySide("compare-runs", runs, [
    { label: "method", cells: runs.map((r) => r.method || "—") },
    { label: "state", cells: runs.map((r) => badge(r.status)) },
    { label: "wall time", cells: runs.map((r) => duration(r.wall_s)) },
    { label: "tokens/s", cells: runs.map((r) => num(r.tokens_per_s)) },
    { label: "peak memory", cells: runs.map((r) => (r.peak_memory ? `${num(r.peak_memory.value)} (${r.peak_memory.key})` : "—")) },
    { label: "registered", cells: runs.map((r) => (r.versions.length ? r.versions.map((v) => v.ref).join(", ") : "—")) },
  ]);

  const onlyDiff = h("input", { type: "checkbox", id: "only-diff" });
  const differing = c.recipe.filter((f) => f.differs).length;
  const recipe = h("div", { id: "compare-recipe" });
  const drawRecipe = () => recipe.replaceChildren(sideBySide("recipe-table", runs,
    c.recipe.filter((f) => !onlyDiff.checked || f.differs).map((f) => ({ label: f.key, differs: f.differs, cells: f.values.map(show) })),
    { rowClass: (row) => (row.differs ? "differs" : null) }));
  onlyDiff.addEventListener("change", drawRecipe);
  drawRecipe();
  const hidden = runs.filter((r) => r.recipe_hidden);

  const finalKeys = [...new Set(runs.flatMap((r) => Object.keys(r.final_metrics)))].sort();
  const scores = runs.flatMap((r) => r.versions.flatMap((v) => v.scores.map((s) => ({ run: r, v, s }))));

  main.append(
    h("div", { class: "card" }, h("h2", {}, "Runs"), overview),
    h("div", { class: "card" }, h("h2", {}, "Recipe"),
      h("p", { class: "muted", id: "recipe-summary" }, `${differing} of ${c.recipe.length} fields differ (highlighted). `,
        h("label", { class: "inline" }, onlyDiff, " only the fields that differ")),
      hidden.length ? h("p", { class: "muted", id: "recipe-hidden" },
        `Recipe of ${hidden.map((r) => `#${r.id}`).join(", ")} ${hidden[0].recipe_hidden}.`) : null,
      recipe),
    h("div", { class: "card" }, h("h2", {}, "Loss curves"),
      h("div", { class: "charts", id: "compare-charts" }, c.curve_keys.length ? c.curve_keys.map((k) => runsChart(k, runs))
        : h("p", { class: "muted" }, "No run logged a loss."))),
    h("div", { class: "card" }, h("h2", {}, "Final metrics"), finalKeys.length
      ? sideBySide("compare-final", runs, finalKeys.map((k) => ({ label: k, cells: runs.map((r) => num(r.final_metrics[k])) })))
      : h("p", { class: "muted" }, "—")),
    h("div", { class: "card" }, h("h2", {}, "Eval scores of the registered versions"), scores.length
      ? h("table", { id: "compare-scores" },
        h("thead", {}, h("tr", {}, ["Run", "Version", "Eval", "Dataset", "Scorer", "Mean", "n"].map((t) => h("th", {}, t)))),
        h("tbody", {}, scores.map(({ run, v, s }) => h("tr", {}, h("td", {}, `#${run.id}`), h("td", {}, v.ref),
          h("td", {}, h("a", { href: `#/evals/${s.eval_id}` }, `#${s.eval_id}`)), h("td", {}, s.dataset || "—"),
          h("td", {}, s.scorer), h("td", {}, num(s.mean)), h("td", {}, String(s.n))))))
      : h("p", { class: "muted", id: "compare-no-scores" }, "— (no eval ran on a version these runs registered)")));
}
