// Keys (admin keys only): list, create (the secret is shown once), revoke.
import { get, post, request } from "../api.js";
import { banner, field, fmtTime, h, showError, table } from "../dom.js";

export async function keysPage(main) {
  const list = h("div", {});
  const name = h("input", { type: "text", id: "key-name", placeholder: "e.g. alice" });
  const role = h("select", { id: "key-role" }, ["user", "service", "admin"].map((r) => h("option", { value: r }, r)));
  const secret = h("div", { id: "key-secret" });
  const load = async () => {
    const keys = await get("/api/keys");
    list.replaceChildren(table([
      { title: "Name", cell: (k) => k.name }, { title: "Role", cell: (k) => k.role },
      { title: "Created", cell: (k) => fmtTime(k.created_at) },
      { title: "Last used", cell: (k) => fmtTime(k.last_used_at) },
      { title: "Prefix", cell: (k) => k.prefix }, { title: "Revoked", cell: (k) => (k.revoked ? "revoked" : "") },
      { title: "", cell: (k) => (k.revoked ? "" : h("button", { class: "danger", onclick: async () => {
        try { await request(`/api/keys/${encodeURIComponent(k.name)}`, { method: "DELETE" }); banner(`Key ${k.name} revoked.`, "info"); await load(); }
        catch (e) { showError(e); }
      } }, "Revoke")) },
    ], keys));
  };
  const create = async (ev) => {
    ev.preventDefault();
    banner(null);
    try {
      const k = await post("/api/keys", { name: name.value.trim(), role: role.value });
      secret.replaceChildren(h("p", {}, `Key ${k.name} (${k.role}) — copy it now, it is not shown again:`), h("pre", {}, k.key));
      await load();
    } catch (e) { showError(e); }
  };
  main.append(h("h1", {}, "API keys"),
    h("form", { class: "card", onsubmit: create }, h("div", { class: "grid" }, field("Name", name), field("Role", role)),
      h("p", {}, h("button", { type: "submit", id: "key-create" }, "Create key")), secret),
    h("div", { class: "card" }, list));
  await load();
}
