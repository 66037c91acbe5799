// Usage: calls, tokens and cost of LLM calls through the gateway, grouped by service, model, key
// or day (admin keys see every key; other keys their own calls — the API decides).
import { get } from "../api.js";
import { barChart } from "../chart.js";
import { field, fill, h, showError, table } from "../dom.js";

const GROUPINGS = ["service,model", "model", "service", "key", "day", "model,day"];

export async function usagePage(main) {
  const groupBy = h("select", { id: "usage-group" }, GROUPINGS.map((g) => h("option", { value: g }, g.replace(",", " × "))));
  const days = h("select", { id: "usage-days" }, [["1", "last day"], ["7", "last 7 days"], ["30", "last 30 days"], ["", "all time"]]
    .map(([v, t]) => h("option", { value: v }, t)));
  days.value = "7";
  const out = h("div", { id: "usage" });
  const load = async () => {
    try {
      const since = days.value ? `&since=${new Date(Date.now() - Number(days.value) * 86400e3).toISOString()}` : "";
      const r = await get(`/api/usage?group_by=${encodeURIComponent(groupBy.value)}${since}`);
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
    } catch (e) { showError(e); }
  };
  groupBy.addEventListener("change", load);
  days.addEventListener("change", load);
  main.append(h("h1", {}, "Usage"), h("div", { class: "card" }, h("div", { class: "grid" }, field("Group by", groupBy), field("Period", days)), out));
  await load();
}
