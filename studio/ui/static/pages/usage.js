// Usage: calls, tokens and cost of LLM calls through the gateway, grouped by service, model, key
// or day (admin keys see every key; other keys their own calls — the API decides); and over time:
// a line per model across the period's days (calls, tokens, cost; `group_by=model,day`).
import { get } from "../api.js";
import { barChart, overlayChart } from "../chart.js";
import { field, fill, h, showError, table } from "../dom.js";

const GROUPINGS = ["service,model", "model", "service", "key", "day", "model,day"];
const COLORS = ["#2f5bd3", "#c2410c", "#15803d", "#7c3aed", "#b45309", "#0e7490", "#be123c", "#4d7c0f"];
const DAY_MS = 86400e3;

// Rows of {model, day, …} as one line per model over every day from the first to the last (a day
// without calls is 0): the charts of usage over time. The x value is the day's number since the epoch.
export function dailyLines(rows, value) {
  const dayNo = (d) => Math.round(Date.parse(`${d}T00:00:00Z`) / DAY_MS);
  const days = rows.map((r) => dayNo(r.day));
  const first = Math.min(...days), last = Math.max(...days);
  const models = [...new Set(rows.map((r) => r.model ?? "—"))].sort();
  return models.map((m, i) => {
    const byDay = new Map(rows.filter((r) => (r.model ?? "—") === m).map((r) => [dayNo(r.day), value(r)]));
    const points = [];
    for (let d = first; d <= last; d++) points.push({ step: d, value: byDay.get(d) ?? 0 });
    return { id: m, name: m, color: COLORS[i % COLORS.length], points };
  });
}

const dayText = (n) => new Date(n * DAY_MS).toISOString().slice(0, 10);

function overTime(r) {
  const rows = r.rows.filter((row) => row.day);
  if (!rows.length) return h("p", { class: "muted", id: "usage-over-time-empty" }, "No gateway calls in this period.");
  const lines = (value) => dailyLines(rows, value).slice(0, COLORS.length);
  return h("div", { class: "charts", id: "usage-over-time" },
    overlayChart("calls per day", lines((row) => row.calls), undefined, dayText),
    overlayChart("tokens per day", lines((row) => (row.prompt_tokens || 0) + (row.completion_tokens || 0)), undefined, dayText),
    overlayChart("cost per day (USD)", lines((row) => Number(row.cost_usd) || 0), undefined, dayText));
}

export async function usagePage(main) {
  const groupBy = h("select", { id: "usage-group" }, GROUPINGS.map((g) => h("option", { value: g }, g.replace(",", " × "))));
  const days = h("select", { id: "usage-days" }, [["1", "last day"], ["7", "last 7 days"], ["30", "last 30 days"], ["", "all time"]]
    .map(([v, t]) => h("option", { value: v }, t)));
  days.value = "7";
  const out = h("div", { id: "usage" }, h("p", { class: "muted" }, "Loading…"));
  const timeline = h("div", { id: "usage-time" }, h("p", { class: "muted" }, "Loading…"));
  const load = async () => {
    try {
      const since = days.value ? `&since=${new Date(Date.now() - Number(days.value) * 86400e3).toISOString()}` : "";
      const [r, perDay] = await Promise.all([get(`/api/usage?group_by=${encodeURIComponent(groupBy.value)}${since}`),
        get(`/api/usage?group_by=model,day${since}`)]);
      fill(timeline, overTime(perDay));
      const label = (row) => r.group_by.map((g) => row[g] ?? "—").join(" · ") || "total";
      const cols = [...r.group_by.map((g) => ({ title: g, cell: (row) => row[g] ?? "—" })),
        { title: "Calls", cell: (row) => row.calls }, { title: "Prompt tokens", cell: (row) => row.prompt_tokens },
        { title: "Completion tokens", cell: (row) => row.completion_tokens },
        { title: "Cost USD", cell: (row) => Number(row.cost_usd).toFixed(6) },
        { title: "Cache hits", cell: (row) => row.cache_hits ?? 0 }, { title: "Errors", cell: (row) => row.errors ?? 0 },
        { title: "Mean latency ms", cell: (row) => (row.mean_latency_ms == null ? "—" : Math.round(row.mean_latency_ms)) }];
      fill(out,
        r.rows.length ? h("div", { class: "charts" },
          barChart("cost (USD)", r.rows.map((row) => ({ label: label(row), value: Number(row.cost_usd) || 0 }))),
          barChart("tokens", r.rows.map((row) => ({ label: label(row), value: (row.prompt_tokens || 0) + (row.completion_tokens || 0) })))) : null,
        table(cols, r.rows, { empty: "No gateway calls in this period." }));
    } catch (e) {
      fill(out, h("p", { class: "muted", id: "usage-error" }, `Usage could not be read: ${e.message}`));
      fill(timeline);
      showError(e);
    }
  };
  groupBy.addEventListener("change", load);
  days.addEventListener("change", load);
  main.append(h("h1", {}, "Usage"), h("div", { class: "card" }, h("div", { class: "grid" }, field("Group by", groupBy), field("Period", days)), out),
    h("div", { class: "card" }, h("h2", {}, "Over time: per day and model"), timeline));
  await load();
}
