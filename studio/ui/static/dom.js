// Small DOM helpers: elements are built with textContent only (no HTML from data).
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "value") el.value = v;
    else if (k === "checked") el.checked = !!v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function banner(message, kind = "error") {
  const el = document.getElementById("banner");
  if (!message) { el.hidden = true; el.textContent = ""; return; }
  el.className = kind === "info" ? "info" : "";
  el.textContent = message;
  el.hidden = false;
}

// Shows an API error in words; returns true if it handled one (so callers can stop).
export function showError(e) {
  if (e && e.name === "AbortError") return true;
  banner(e && e.message ? e.message : String(e));
  return true;
}

export function badge(text) { return h("span", { class: `badge ${text}`, "data-status": text }, text); }

export function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso.endsWith("Z") || iso.includes("+") ? iso : iso + "Z");
  return d.toLocaleString();
}

export function table(columns, rows, { empty = "Nothing here yet." } = {}) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("table", {},
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.title)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", { class: c.class }, c.cell(r)))))));
}

// Server-side paging: the page asks for limit+1 rows; the extra one only says "there is a next page".
export function pager(offset, limit, gotMore, go) {
  return h("div", { class: "pager" },
    h("button", { class: "secondary", disabled: offset === 0, onclick: () => go(Math.max(0, offset - limit)) }, "← Previous"),
    h("span", { class: "muted" }, `page ${Math.floor(offset / limit) + 1}`),
    h("button", { class: "secondary", disabled: !gotMore, onclick: () => go(offset + limit) }, "Next →"));
}

export function field(labelText, input, help) {
  return h("div", {}, h("label", {}, labelText, help ? h("span", { class: "help" }, help) : null), input);
}

// Element.append/replaceChildren turn null into the text "null": these skip empty children.
const present = (kids) => kids.flat().filter((k) => k !== null && k !== undefined && k !== false);
export function fill(el, ...kids) { el.replaceChildren(...present(kids)); return el; }
export function add(el, ...kids) { el.append(...present(kids)); return el; }

// A fetched file response handed to the browser as a download, named by its Content-Disposition
// filename (else ``fallback``).
export async function saveDownload(resp, fallback) {
  const name = /filename="([^"]+)"/.exec(resp.headers.get("content-disposition") || "")?.[1] || fallback;
  const url = URL.createObjectURL(await resp.blob());
  const link = h("a", { href: url, download: name, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}
