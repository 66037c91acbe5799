// Playground: one prompt to 2–4 served models side by side through the gateway
// (/gateway/v1, tagged service "playground" so its calls show in usage), streamed, with sampling
// settings and per-answer latency and tokens.
import { get, post, readSSE, request } from "../api.js";
import { banner, field, h, showError } from "../dom.js";

function answerCard(i, models, initial) {
  const select = h("select", { class: "pg-model", id: `pg-model-${i}` }, models.map((m) => h("option", { value: m }, m)));
  select.value = initial;
  const text = h("div", { class: "text", id: `pg-answer-${i}` });
  const stats = h("div", { class: "muted pg-stats", id: `pg-stats-${i}` });
  const votes = h("div", { class: "row pg-votes", id: `pg-votes-${i}` });
  return { select, text, stats, votes, id: null, view: h("div", { class: "card answer" }, select, text, stats, votes) };
}

// Feedback on logged answers (/v1/feedback, by response id): thumbs, or "this one is better"
// (recorded as a preference over each other answer to the same prompt).
function feedbackButtons(card, cards) {
  const note = h("span", { class: "muted pg-feedback-note" });
  const send = async (bodies, what) => {
    try {
      for (const body of bodies) await post("/v1/feedback", body);
      note.textContent = what;
    } catch (e) { note.textContent = `feedback not recorded: ${e.message}`; note.classList.add("err"); }
  };
  const others = () => cards.filter((c) => c !== card && c.id);
  card.votes.replaceChildren(
    h("button", { class: "secondary pg-up", title: "good answer", onclick: () => send([{ completion_id: card.id, rating: 1 }], "recorded: good") }, "Good"),
    h("button", { class: "secondary pg-down", title: "bad answer", onclick: () => send([{ completion_id: card.id, rating: -1 }], "recorded: bad") }, "Bad"),
    cards.length > 1 ? h("button", { class: "secondary pg-better", onclick: () =>
      send(others().map((o) => ({ completion_id: o.id, preferred_completion_id: card.id })), "recorded: this one is better") }, "This one is better") : "",
    note);
}

async function ask(card, messages, sampling, signal) {
  card.text.textContent = "";
  card.votes.replaceChildren();
  card.id = null;
  card.stats.textContent = "waiting…";
  card.stats.classList.remove("err");
  const t0 = performance.now();
  let first = null, chunks = 0, usage = null, version = null;
  try {
    const resp = await request("/gateway/v1/chat/completions", { method: "POST", raw: true, signal,
      extraHeaders: { "x-studio-service": "playground" },
      json: { model: card.select.value, messages, stream: true, stream_options: { include_usage: true }, ...sampling } });
    version = resp.headers.get("x-studio-model-version");
    await readSSE(resp, (_event, data) => {
      if (data === "[DONE]") return;
      const d = JSON.parse(data);
      if (d.error) throw new Error(d.error.message || JSON.stringify(d.error));
      if (d.usage) usage = d.usage;
      if (d.id) card.id = d.id;
      const delta = d.choices?.[0]?.delta?.content;
      if (delta) {
        // First text (a random base may only emit tokens that decode to nothing).
        if (first === null) first = performance.now();
        chunks++;
        card.text.append(delta);
      }
    });
    const total = (performance.now() - t0) / 1000;
    const tokens = usage ? usage.completion_tokens : chunks;
    card.stats.textContent = [
      version ? `served by ${version}` : null,
      first !== null ? `first token ${((first - t0) / 1000).toFixed(2)} s` : "no text streamed",
      `total ${total.toFixed(2)} s`,
      `${tokens} tokens${usage ? "" : " (chunks)"}`,
      usage ? `${usage.prompt_tokens} prompt tokens` : null,
    ].filter(Boolean).join(" · ");
    card.view.dataset.done = "true";
  } catch (e) {
    if (e.name === "AbortError") return;
    card.stats.textContent = `error: ${e.message}`;
    card.stats.classList.add("err");
    card.view.dataset.done = "error";
  }
}

export async function playgroundPage(main) {
  let models;
  try {
    models = (await get("/v1/models")).data.map((m) => m.id);
  } catch (e) {
    main.append(h("h1", {}, "Playground"), h("p", { class: "err", id: "pg-unavailable" }, e.message));
    return;
  }
  const ctl = { current: null };
  const prompt = h("textarea", { id: "pg-prompt", rows: 3, placeholder: "Ask every model the same thing" });
  const system = h("input", { type: "text", id: "pg-system", placeholder: "(optional) system message" });
  const temperature = h("input", { type: "number", id: "pg-temperature", value: "0", min: "0", max: "2", step: "0.1" });
  const maxTokens = h("input", { type: "number", id: "pg-max-tokens", value: "32", min: "1", step: "1" });
  const topP = h("input", { type: "number", id: "pg-top-p", value: "1", min: "0", max: "1", step: "0.05" });
  const count = h("select", { id: "pg-count" }, [2, 3, 4].map((n) => h("option", { value: n }, `${n} models`)));
  const answers = h("div", { class: "answers", id: "pg-answers" });
  let cards = [];
  const layout = () => {
    const n = Number(count.value);
    const keep = cards.map((c) => c.select.value);
    cards = Array.from({ length: n }, (_, i) => answerCard(i, models, keep[i] ?? models[i % models.length]));
    answers.replaceChildren(...cards.map((c) => c.view));
  };
  count.addEventListener("change", layout);
  const run = async (ev) => {
    ev.preventDefault();
    banner(null);
    const content = prompt.value.trim();
    if (!content) { banner("Type a prompt first."); return; }
    const t = Number(temperature.value), m = Number(maxTokens.value), p = Number(topP.value);
    if (!(t >= 0 && t <= 2) || !(Number.isInteger(m) && m >= 1) || !(p > 0 && p <= 1)) {
      banner("Sampling: temperature 0–2, max tokens a whole number ≥ 1, top-p in (0, 1].");
      return;
    }
    if (ctl.current) ctl.current.abort();
    ctl.current = new AbortController();
    const messages = [...(system.value.trim() ? [{ role: "system", content: system.value.trim() }] : []), { role: "user", content }];
    cards.forEach((c) => delete c.view.dataset.done);
    try {
      await Promise.all(cards.map((c) => ask(c, messages, { temperature: t, max_tokens: m, top_p: p }, ctl.current.signal)));
      for (const c of cards) if (c.id) feedbackButtons(c, cards);
    } catch (e) { showError(e); }
  };
  main.append(h("h1", {}, "Playground"),
    h("form", { class: "card", onsubmit: run },
      field("Prompt", prompt), field("System", system),
      h("div", { class: "grid" }, field("Temperature", temperature), field("Max tokens", maxTokens),
        field("Top-p", topP), field("Compare", count)),
      h("p", {}, h("button", { type: "submit", id: "pg-run" }, "Send to all"))),
    models.length ? answers : h("p", { class: "muted" }, "No models are served."));
  layout();
  return () => ctl.current && ctl.current.abort();
}
