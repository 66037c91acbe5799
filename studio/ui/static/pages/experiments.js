// A/B experiments: aliases that split /v1 traffic between arms (sticky per `user`); per arm the
// requests, latency, versions that answered, ratings and preferences. Create; stop and resume
// (its owner or an admin).
import { TEAM, mayVisit, ownerNote, owns } from "../access.js";
import { get, post, request } from "../api.js";
import { barChart } from "../chart.js";
import { badge, banner, field, fmtTime, h, showError, table } from "../dom.js";

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
  let stopped = false, timer = null;
  const poll = async () => {
    try { await load(); } catch (e) { showError(e); return; }
    if (!stopped) timer = setTimeout(poll, 5000);
  };
  await poll();
  return () => { stopped = true; clearTimeout(timer); };
}
