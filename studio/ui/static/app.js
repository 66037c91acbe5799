// Hash router, navigation by role, and the login page. Each page is render(main, params) and may
// return a cleanup function (stop polling and streams) that runs when the user leaves it.
import { TEAM, homeHash, mayVisit } from "./access.js";
import { auth, get } from "./api.js";
import { banner, field, h, showError } from "./dom.js";
import { batchesPage } from "./pages/batches.js";
import { comparePage } from "./pages/compare.js";
import { datasetPage, datasetsPage, snapshotPage } from "./pages/datasets.js";
import { evalPage, evalsPage } from "./pages/evals.js";
import { experimentPage } from "./pages/experiment.js";
import { experimentDetailPage, experimentsPage } from "./pages/experiments.js";
import { jobPage, jobsPage } from "./pages/jobs.js";
import { keysPage } from "./pages/keys.js";
import { loopGenerationPage, loopPage, loopsPage } from "./pages/loops.js";
import { modelPage, modelsPage } from "./pages/models.js";
import { playgroundPage } from "./pages/playground.js";
import { synthPage } from "./pages/synth.js";
import { usagePage } from "./pages/usage.js";

// [hash pattern, page, menu title (none: not in the menu), roles that may open it (null: every
// role)]. Service keys only call models (the API refuses them every /api/* route but /api/me), so
// the team's pages are for admin and user keys.
const ROUTES = [
  [/^#\/datasets$/, datasetsPage, "Datasets", TEAM],
  [/^#\/datasets\/([^/]+)$/, datasetPage, null, TEAM],
  [/^#\/snapshots\/([^/]+)$/, snapshotPage, null, TEAM],
  [/^#\/synth\/(\d+)$/, synthPage, null, TEAM],
  [/^#\/new$/, experimentPage, "New experiment", TEAM],
  [/^#\/jobs$/, jobsPage, "Jobs", TEAM],
  [/^#\/jobs\/(\d+)$/, jobPage, null, TEAM],
  [/^#\/compare\/([\d,]+)$/, comparePage, null, TEAM],
  [/^#\/batches$/, batchesPage, "Batches", TEAM],
  [/^#\/models$/, modelsPage, "Models", TEAM],
  [/^#\/models\/([^/]+)$/, modelPage, null, TEAM],
  [/^#\/playground$/, playgroundPage, "Playground", null],
  [/^#\/evals$/, evalsPage, "Evaluations", TEAM],
  [/^#\/evals\/(\d+)$/, evalPage, null, TEAM],
  [/^#\/experiments$/, experimentsPage, "A/B", TEAM],
  [/^#\/experiments\/([^/]+)$/, experimentDetailPage, null, TEAM],
  [/^#\/loops$/, loopsPage, "Loops", TEAM],
  [/^#\/loops\/([^/]+)$/, loopPage, null, TEAM],
  [/^#\/loops\/([^/]+)\/(\d+)$/, loopGenerationPage, null, TEAM],
  [/^#\/usage$/, usagePage, "Usage", TEAM],
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
  document.querySelector("#top .brand").setAttribute("href", me ? homeHash() : "#/login");
  if (!me) return;
  for (const [re, , title, roles] of ROUTES) {
    if (!title || !mayVisit(roles)) continue;
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
      const next = sessionStorage.getItem("studio.next");
      sessionStorage.removeItem("studio.next");
      location.hash = next && mayVisit(routeOf(next)?.[3]) ? next : homeHash();
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

const routeOf = (hash) => ROUTES.find(([re]) => re.test(hash));

// A page the key's role cannot use says so (its API calls would only be refused).
function notForRole(main, roles) {
  main.append(h("p", { class: "muted", id: "not-for-role" },
    `This page is for ${roles.join(" and ")} keys; key ${auth.me.name} has role ${auth.me.role}. `,
    h("a", { href: homeHash() }, mayVisit(TEAM) ? "Go to jobs" : "Go to the playground")));
}

// A session from before /api/me named the key's id cannot tell what the key owns: ask again.
async function refreshMe() {
  if (!auth.me || "id" in auth.me) return;
  try { auth.set(auth.key, await get("/api/me")); } catch { /* a 401 already sent us to the login */ }
}

async function route() {
  if (cleanup) { try { cleanup(); } catch { /* a page's cleanup must not block navigation */ } cleanup = null; }
  banner(null);
  const main = document.getElementById("main");
  main.replaceChildren();
  await refreshMe();
  const hash = location.hash || (auth.me ? homeHash() : "#/jobs");
  visit++;
  if (!auth.me || hash === "#/login") {
    if (hash !== "#/login") sessionStorage.setItem("studio.next", hash);
    if (hash !== "#/login") { location.hash = "#/login"; return; }
    renderNav();
    loginPage(main);
    return;
  }
  renderNav();
  for (const [re, page, , roles] of ROUTES) {
    const m = hash.match(re);
    if (m && !mayVisit(roles)) { notForRole(main, roles); return; }
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
  main.append(h("p", {}, "No such page. ", h("a", { href: homeHash() }, "Go to the start page")));
}

window.addEventListener("hashchange", route);
route();
