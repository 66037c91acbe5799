// Hash router, navigation by role, and the login page. Each page is render(main, params) and may
// return a cleanup function (stop polling and streams) that runs when the user leaves it.
import { auth, get } from "./api.js";
import { banner, field, h, showError } from "./dom.js";
import { datasetPage, datasetsPage, snapshotPage } from "./pages/datasets.js";
import { evalPage, evalsPage } from "./pages/evals.js";
import { experimentPage } from "./pages/experiment.js";
import { experimentDetailPage, experimentsPage } from "./pages/experiments.js";
import { jobPage, jobsPage } from "./pages/jobs.js";
import { keysPage } from "./pages/keys.js";
import { modelPage, modelsPage } from "./pages/models.js";
import { playgroundPage } from "./pages/playground.js";
import { synthPage } from "./pages/synth.js";
import { usagePage } from "./pages/usage.js";

// [hash pattern, page, roles that see it in the menu (null: every role)]
const ROUTES = [
  [/^#\/datasets$/, datasetsPage, "Datasets", null],
  [/^#\/datasets\/([^/]+)$/, datasetPage],
  [/^#\/snapshots\/([^/]+)$/, snapshotPage],
  [/^#\/synth\/(\d+)$/, synthPage],
  [/^#\/new$/, experimentPage, "New experiment", null],
  [/^#\/jobs$/, jobsPage, "Jobs", null],
  [/^#\/jobs\/(\d+)$/, jobPage],
  [/^#\/models$/, modelsPage, "Models", null],
  [/^#\/models\/([^/]+)$/, modelPage],
  [/^#\/playground$/, playgroundPage, "Playground", null],
  [/^#\/evals$/, evalsPage, "Evaluations", null],
  [/^#\/evals\/(\d+)$/, evalPage],
  [/^#\/experiments$/, experimentsPage, "A/B", null],
  [/^#\/experiments\/([^/]+)$/, experimentDetailPage],
  [/^#\/usage$/, usagePage, "Usage", null],
  [/^#\/keys$/, keysPage, "Keys", ["admin"]],
];

let cleanup = null;
let visit = 0;

function renderNav() {
  const nav = document.getElementById("nav");
  const who = document.getElementById("who");
  nav.replaceChildren();
  who.replaceChildren();
  const me = auth.me;
  if (!me) return;
  for (const [re, , title, roles] of ROUTES) {
    if (!title || (roles && !roles.includes(me.role))) continue;
    const href = re.source.replace(/^\^/, "").replace(/\$$/, "").replace(/\\\//g, "/");
    nav.append(h("a", { href, class: location.hash.startsWith(href) ? "active" : "" }, title));
  }
  who.append(`${me.name} · ${me.role} `,
    h("button", { class: "secondary", id: "logout", onclick: () => { auth.clear(); location.hash = "#/login"; } }, "Log out"));
}

function loginPage(main) {
  const input = h("input", { type: "password", id: "key", autocomplete: "off", placeholder: "sk-studio-…" });
  const submit = async (ev) => {
    ev.preventDefault();
    banner(null);
    const key = input.value.trim();
    if (!key) { banner("Enter a studio API key (create one with `studio keys create --name you`)."); return; }
    auth.set(key, null);
    try {
      const me = await get("/api/me");
      auth.set(key, me);
      location.hash = sessionStorage.getItem("studio.next") || "#/jobs";
      sessionStorage.removeItem("studio.next");
    } catch (e) {
      auth.clear();
      showError(e);
    }
  };
  main.append(h("div", { class: "card", style: "max-width: 28rem" },
    h("h1", {}, "Log in"),
    h("form", { onsubmit: submit },
      field("Studio API key", input, "an admin key is in $STUDIO_HOME/admin.key after `studio up`"),
      h("p", {}, h("button", { type: "submit", id: "login" }, "Log in")))));
  input.focus();
}

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* a page's cleanup must not block navigation */ } cleanup = null; }
  banner(null);
  const main = document.getElementById("main");
  main.replaceChildren();
  const hash = location.hash || "#/jobs";
  visit++;
  if (!auth.me || hash === "#/login") {
    if (hash !== "#/login") sessionStorage.setItem("studio.next", hash);
    if (hash !== "#/login") { location.hash = "#/login"; return; }
    renderNav();
    loginPage(main);
    return;
  }
  renderNav();
  for (const [re, page] of ROUTES) {
    const m = hash.match(re);
    if (m) {
      const args = m.slice(1).map(decodeURIComponent);
      // Each visit renders into its own box: a page still loading when the user moves on then
      // writes into a detached box, and its cleanup runs as soon as it returns.
      const mine = ++visit;
      const view = h("div", { class: "view" });
      main.append(view);
      try {
        const done = (await page(view, ...args)) || null;
        if (mine === visit) cleanup = done;
        else if (done) done();
      } catch (e) {
        if (mine === visit) showError(e);
      }
      return;
    }
  }
  main.append(h("p", {}, "No such page. ", h("a", { href: "#/jobs" }, "Go to jobs")));
}

window.addEventListener("hashchange", route);
route();
