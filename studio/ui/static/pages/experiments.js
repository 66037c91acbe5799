// A/B experiments: aliases that split /v1 traffic between arms (sticky per `user`); per arm the
// requests, latency, versions that answered, ratings and preferences. Create; stop and resume
// (its owner or an admin); export its feedback as DPO data and start DPO from its champion.
import { TEAM, mayVisit, ownerNote, owns } from "../access.js";
import { get, post, request } from "../api.js";
import { barChart } from "../chart.js";
import { badge, banner, field, fill, fmtTime, h, showError, table } from "../dom.js";
import { toYaml } from "../yaml.js";

export async function experimentsPage(main) {
  const list = h("div", { id: "experiments-list" });
  const load = async () => {
    try {
      const rows = await get("/api/experiments");
      list.replaceChildren(table([
        { title: "Alias", cell: (e) => h("a", { href: `#/experiments/${encodeURIComponent(e.alias)}` }, e.alias) },
        { title: "State", cell: (e) => badge(e.status) },
        { title: "Arms", cell: (e) => e.arms.map((a) => `${a.model} ${Math.round(a.share * 100)}%`).join(" · ") },
        { title: "By", cell: (e) => e.created_by || "" }, { title: "Created", cell: (e) => fmtTime(e.created_at) },
      ], rows, { empty: "No experiments yet." }));
    } catch (e) { showError(e); }
  };
  const alias = h("input", { type: "text", id: "exp-alias", placeholder: "e.g. reverse-ab" });
  const arms = h("div", { id: "exp-arms" });
  const addArm = (model = "", weight = "1") => arms.append(h("div", { class: "row arm-row" },
    h("input", { type: "text", class: "arm-model", value: model, placeholder: "model: base, name or name@N", style: "width: 18rem" }),
    h("input", { type: "number", class: "arm-weight", value: weight, min: "0", step: "any", style: "width: 6rem" })));
  addArm();
  addArm();
  const create = async (ev) => {
    ev.preventDefault();
    banner(null);
    const spec = { alias: alias.value.trim(), arms: [...arms.querySelectorAll(".arm-row")]
      .map((r) => ({ model: r.querySelector(".arm-model").value.trim(), weight: Number(r.querySelector(".arm-weight").value) }))
      .filter((a) => a.model) };
    try {
      const e = await post("/api/experiments", spec);
      location.hash = `#/experiments/${encodeURIComponent(e.alias)}`;
    } catch (e) { showError(e); }
  };
  const canEdit = mayVisit(TEAM);
  main.append(h("h1", {}, "A/B experiments"),
    canEdit ? h("form", { class: "card", onsubmit: create }, h("h2", {}, "New experiment"),
      field("Alias", alias, "clients request this name on /v1"), h("label", {}, "Arms", h("span", { class: "help" }, "model and relative weight")),
      arms, h("p", { class: "row" }, h("button", { type: "button", class: "secondary", onclick: () => addArm() }, "+ Arm"),
        h("button", { type: "submit", id: "exp-create" }, "Create"))) : null,
    h("div", { class: "card" }, list));
  await load();
}

export async function experimentDetailPage(main, alias) {
  const box = h("div", {});
  main.append(h("p", {}, h("a", { href: "#/experiments" }, "← all experiments")), box);
  const load = async () => {
    const e = await get(`/api/experiments/${encodeURIComponent(alias)}`);
    const setStatus = async (status) => {
      try {
        await request(`/api/experiments/${encodeURIComponent(alias)}`, { method: "PATCH", json: { status } });
        banner(`Experiment ${alias} is ${status}.`, "info");
        await load();
      } catch (err) { showError(err); }
    };
    box.replaceChildren(h("div", { class: "card" },
      h("h1", {}, `Experiment ${e.alias} `, badge(e.status)),
      h("p", { class: "muted", id: "exp-summary" }, `${e.requests ?? 0} requests · ${e.feedback ?? 0} feedback · by ${e.created_by || "?"}`),
      h("div", { id: "exp-arms-stats" }, table([
        { title: "Arm", cell: (a) => a.model }, { title: "Traffic", cell: (a) => `${Math.round(a.share * 100)}%` },
        { title: "Requests", cell: (a) => a.requests ?? 0 },
        { title: "Versions", cell: (a) => (a.versions || []).join(", ") },
        { title: "p50 latency ms", cell: (a) => a.latency_ms_p50 ?? "—" }, { title: "p50 TTFT ms", cell: (a) => a.ttft_ms_p50 ?? "—" },
        { title: "Ratings (+/−)", cell: (a) => `${a.ratings ?? 0} (${a.positive ?? 0}/${a.negative ?? 0})` },
        { title: "Mean rating", cell: (a) => (a.rating_mean == null ? "—" : Number(a.rating_mean).toFixed(2)) },
        { title: "Preferred / not", cell: (a) => `${a.preferred ?? 0} / ${a.not_preferred ?? 0}` },
      ], e.arms)),
      e.arms.some((a) => a.requests) ? h("div", { class: "charts" },
        barChart("requests per arm", e.arms.map((a) => ({ label: a.model, value: a.requests || 0 }))),
        barChart("preferred (wins) per arm", e.arms.map((a) => ({ label: a.model, value: a.preferred || 0 })))) : null,
      h("p", {}, !owns(e.owner_key_id) ? ownerNote(e.status === "active" ? "stop it" : "resume it", { id: "exp-owner-note" })
        : e.status === "active" ? h("button", { class: "danger", id: "exp-stop", onclick: () => setStatus("stopped") }, "Stop")
          : h("button", { id: "exp-resume", onclick: () => setStatus("active") }, "Resume"))));
  };
  // Live: traffic and feedback keep arriving while the experiment runs.
  let stopped = false, timer = null, flow = null;
  const poll = async () => {
    try { await load(); } catch (e) { showError(e); return; }
    if (!flow) {  // built once, below the live numbers: its steps keep their state across refreshes
      flow = h("div", {});
      main.append(flow);
      try { await dpoFlow(flow, alias); } catch (e) { showError(e); }
    }
    if (!stopped) timer = setTimeout(poll, 5000);
  };
  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}

// Feedback → DPO in one flow: 1. export the experiment's feedback as a preference snapshot (POST
// /api/experiments/{alias}/export, its owner or an admin); 2. a DPO job from an arm's registered
// version (init_adapter = that version, its base model, the new snapshot), pre-filled, submitted
// with POST /api/jobs, and linked. "No pairs yet" and every refusal are the API's words.
async function dpoFlow(box, alias) {
  const [e, models] = await Promise.all([get(`/api/experiments/${encodeURIComponent(alias)}`), get("/api/models?limit=500")]);
  const card = h("div", { class: "card", id: "dpo-flow" }, h("h2", {}, "Feedback → DPO"));
  box.append(card);
  if (!owns(e.owner_key_id)) {
    card.append(h("p", {}, ownerNote("export its feedback (the rows hold every caller's prompts)", { id: "dpo-owner-note" })));
    return;
  }
  const name = h("input", { type: "text", id: "dpo-dataset-name", value: `${alias}-prefs` });
  const exportButton = h("button", { type: "button", id: "dpo-export" }, "Export feedback as DPO data");
  const exported = h("div", { id: "dpo-export-result" });
  const step2 = h("div", { id: "dpo-step2" });
  exportButton.addEventListener("click", async () => {
    banner(null);
    exportButton.disabled = true;
    exported.replaceChildren(h("p", { class: "muted" }, "Exporting…"));
    step2.replaceChildren();
    try {
      const r = await post(`/api/experiments/${encodeURIComponent(alias)}/export`, { name: name.value.trim() });
      fill(exported, h("p", { class: "ok", id: "dpo-export-outcome" },
        `${r.created ? "Stored" : "Unchanged (same pairs):"} `,
        h("a", { href: `#/snapshots/${encodeURIComponent(r.ref)}` }, r.ref),
        ` · ${r.rows} preference pairs (${r.explicit} explicit, ${r.from_ratings} from ratings` +
        `${r.duplicates ? `, ${r.duplicates} duplicates dropped` : ""}) · snapshot ${r.snapshot_id.slice(0, 12)}`));
      startDpo(step2, r.ref, e.arms, models);
    } catch (err) {
      fill(exported, h("p", { class: "err", id: "dpo-export-error" }, err.message || String(err)));
      showError(err);
    } finally { exportButton.disabled = false; }
  });
  card.append(h("p", { class: "muted" }, "1. Store the ratings and preferences given on this experiment's answers as preference rows (prompt, chosen, rejected)."),
    h("div", { class: "row" }, field("Dataset name", name, "a new version of it"), exportButton), exported, step2);
}

// Step 2: the arms that are registered versions; the champion (or the newest) of a bare name.
function startDpo(box, dataset, arms, models) {
  const byName = new Map(models.map((m) => [m.name, m]));
  const choices = arms.map((a) => {
    const [n, v] = a.model.split("@");
    const m = byName.get(n);
    if (!m) return null;
    return { arm: a.model, name: n, version: v ? Number(v) : (m.champion_version ?? m.latest_version),
             champion: !v && m.champion_version != null };
  }).filter(Boolean);
  if (!choices.length) {
    box.append(h("p", { class: "muted", id: "dpo-no-adapter" },
      "2. No arm is a registered model version: DPO starts from a registered adapter. Train on the snapshot from the New experiment page."));
    return;
  }
  const pick = h("select", { id: "dpo-from" }, choices.map((c, i) => h("option", { value: String(i) },
    `${c.name}@${c.version}${c.champion ? " (champion)" : ""} — arm ${c.arm}`)));
  const jobName = h("input", { type: "text", id: "dpo-job-name" });
  const base = h("input", { type: "text", id: "dpo-base-model" });
  const init = h("input", { type: "text", id: "dpo-init-adapter" });
  const data = h("input", { type: "text", id: "dpo-dataset", value: dataset });
  const yamlBox = h("pre", { id: "dpo-yaml" });
  const start = h("button", { type: "button", id: "dpo-start" }, "Start DPO from this champion");
  const outcome = h("div", { id: "dpo-job-result" });
  const spec = () => ({ name: jobName.value.trim(), method: "dpo", base_model: base.value.trim(),
                        init_adapter: init.value.trim(), data: { dataset: data.value.trim() } });
  const show = () => { yamlBox.textContent = `# studio train submit dpo.yaml\n${toYaml(spec())}`; };
  const prefill = async () => {
    const c = choices[Number(pick.value)];
    jobName.value = c.name;
    init.value = `${c.name}@${c.version}`;
    base.value = "";
    try {
      const m = await get(`/api/models/${encodeURIComponent(c.name)}?newest_first=true&limit=500`);
      base.value = (m.versions.find((v) => v.version === c.version) || {}).base_model || "";
    } catch (err) { showError(err); }
    show();
  };
  for (const el of [jobName, base, init, data]) el.addEventListener("input", show);
  pick.addEventListener("change", prefill);
  start.addEventListener("click", async () => {
    banner(null);
    start.disabled = true;
    outcome.replaceChildren();
    try {
      const job = await post("/api/jobs", spec());
      fill(outcome, h("p", { class: "ok", id: "dpo-job-outcome" }, `DPO job #${job.id} ${job.status || "queued"}: `,
        h("a", { href: `#/jobs/${job.id}`, id: "dpo-job-link" }, "watch it on its page")));
    } catch (err) {
      fill(outcome, h("p", { class: "err", id: "dpo-job-error" }, err.message || String(err)));
      showError(err);
    } finally { start.disabled = false; }
  });
  box.append(h("p", { class: "muted" }, "2. A DPO job that starts from the chosen version's adapter (its frozen copy is the reference model) and trains on the snapshot; the result registers as a new version of the registry name."),
    h("div", { class: "grid" }, field("Start from", pick), field("Registry name", jobName), field("Base model", base),
      field("Init adapter", init), field("Preference dataset", data)),
    yamlBox, h("p", {}, start), outcome);
  return prefill();
}
