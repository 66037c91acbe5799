// A canary's confidence sequence as inline SVG (docs/loops.md, "The statistics"): per stored look
// the thumbs-up-rate difference (candidate − champion) with its always-valid lower and upper
// bounds, the band between them, zero and −margin as reference lines, each look's verdict as a
// coloured mark, and the candidate's weight in force along the bottom. No chart library.
const NS = "http://www.w3.org/2000/svg";
export const VERDICT_COLORS = { promote: "#127a3e", roll_back: "#b42318", pause: "#a15c07",
                                keep_champion: "#667085", wait: "#2f5bd3" };

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const signed = (v) => (v > 0 ? "+" : v < 0 ? "−" : "") + Math.abs(v).toFixed(3);
const pct = (w) => `${Number((w * 100).toFixed(1))} %`;

export function duration(s) {
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Number((s / 60).toFixed(1))} min`;
  return `${Number((s / 3600).toFixed(1))} h`;
}

const rated = (k) => (k.look?.champion?.rated ?? 0) + (k.look?.candidate?.rated ?? 0);
const hasBounds = (k) => k.estimate !== null && k.lower !== null && k.upper !== null;

// One line per look, for its tooltip and the table beside the chart.
export function lookWords(k) {
  const a = k.look?.champion || {}, b = k.look?.candidate || {};
  const interval = hasBounds(k) ? `estimate ${signed(k.estimate)} in [${signed(k.lower)}, ${signed(k.upper)}]` : "no estimate yet";
  return `look ${k.id} at ${duration(k.look?.at_s ?? 0)} · weight ${pct(k.weight)} · champion ${a.thumbs_up ?? 0}/${a.rated ?? 0} up` +
    ` · candidate ${b.thumbs_up ?? 0}/${b.rated ?? 0} up · ${interval} · ${k.action}: ${k.verdict?.detail ?? ""}`;
}

// looks: GenerationDetail.looks; rule: its frozen decision rule; x: "time" (seconds since the
// canary began) or "rated" (rated completions, both arms).
export function sequenceChart(looks, rule = {}, x = "time") {
  const W = 740, H = 320, L = 60, R = 170, T = 28, B = 70;
  const margin = rule.noninferiority_margin ?? 0, alpha = rule.alpha ?? 0.05;
  const bounded = looks.filter(hasBounds);
  const title = `Thumbs-up rate, candidate − champion: ${Math.round((1 - alpha) * 100)} % confidence sequence`;
  const root = svg("svg", { class: "chart sequence", id: "cs-chart", viewBox: `0 0 ${W} ${H}`, role: "img",
    "aria-label": title, "data-looks": String(looks.length), "data-bounded": String(bounded.length), "data-x": x });
  root.append(svg("text", { x: L, y: 16, class: "title" }, `${title} (${looks.length} looks)`));
  if (!looks.length) {
    root.append(svg("text", { x: L, y: T + 40 }, "No looks stored: a generation stores one about every minute of its canary."));
    return root;
  }
  const xOf = x === "rated" ? rated : (k) => k.look?.at_s ?? 0;
  const xs = looks.map(xOf);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  const ys = [0, -margin, ...bounded.flatMap((k) => [k.lower, k.upper, k.estimate])];
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  const pad = (y1 - y0) * 0.08 || 0.05;
  y0 -= pad; y1 += pad;
  const plotB = H - B, right = W - R;
  const X = (v) => L + 8 + ((v - x0) / (x1 - x0)) * (right - L - 16);
  const Y = (v) => plotB - ((v - y0) / (y1 - y0)) * (plotB - T);
  root.append(svg("line", { x1: L, y1: plotB, x2: right, y2: plotB, class: "axis" }),
    svg("line", { x1: L, y1: T, x2: L, y2: plotB, class: "axis" }),
    svg("text", { x: L - 4, y: T + 4, "text-anchor": "end" }, signed(y1)),
    svg("text", { x: L - 4, y: plotB, "text-anchor": "end" }, signed(y0)));
  const xLabel = x === "rated" ? (v) => `${Math.round(v)} rated` : (v) => duration(Math.max(0, v));
  root.append(svg("text", { x: L, y: plotB + 14 }, xLabel(x0)),
    svg("text", { x: right, y: plotB + 14, "text-anchor": "end" }, xLabel(x1)),
    svg("text", { x: (L + right) / 2, y: plotB + 14, "text-anchor": "middle" },
      x === "rated" ? "rated completions, both arms" : "time since the canary began"));
  // Reference lines: 0 (no difference) and −margin (the non-inferiority bound the lower bound must clear).
  const ref = (v, cls, words) => root.append(svg("line", { x1: L, y1: Y(v), x2: right, y2: Y(v), class: `ref ${cls}` }),
    svg("text", { x: L + 4, y: Y(v) - 3, class: `ref-label ${cls}` }, words));
  if (margin > 0) {
    ref(0, "zero", "0: no difference");
    ref(-margin, "margin", `−${margin}: −margin`);
  } else {
    ref(0, "zero margin", "0 = −margin (0)");
  }
  if (bounded.length) {
    const pts = (f) => bounded.map((k) => `${X(xOf(k))},${Y(f(k))}`);
    root.append(svg("polygon", { class: "band", points: [...pts((k) => k.upper), ...pts((k) => k.lower).reverse()].join(" ") }),
      svg("polyline", { class: "bound upper", points: pts((k) => k.upper).join(" ") }),
      svg("polyline", { class: "bound lower", points: pts((k) => k.lower).join(" ") }),
      svg("polyline", { class: "estimate", points: pts((k) => k.estimate).join(" ") }));
  }
  // One mark per look: its interval and estimate (or a hollow mark on the axis before the data
  // allow one), coloured by its verdict; a verdict other than "wait" is named above it.
  looks.forEach((k) => {
    const cx = X(xOf(k)), color = VERDICT_COLORS[k.action] || "#1d2330";
    const g = svg("g", { class: "look", "data-action": k.action, "data-weight": String(k.weight),
                         "data-bounded": String(hasBounds(k)) });
    g.append(svg("title", {}, lookWords(k)));
    if (hasBounds(k)) {
      g.append(svg("line", { class: "interval", x1: cx, x2: cx, y1: Y(k.lower), y2: Y(k.upper), stroke: color }),
        svg("circle", { cx, cy: Y(k.estimate), r: 4, fill: color }));
    } else {
      g.append(svg("circle", { cx, cy: plotB, r: 3.5, fill: "#fff", stroke: color, "stroke-width": 1.5 }));
    }
    if (k.action !== "wait") {
      g.append(svg("text", { x: cx, y: (hasBounds(k) ? Y(k.upper) : plotB) - 7, "text-anchor": "middle",
                             class: "verdict", fill: color }, k.action.replace("_", " ")));
    }
    root.append(g);
  });
  // The candidate's weight in force at each look, as a step line in a strip under the axis.
  const sTop = plotB + 24, sBot = H - 12, wMax = Math.max(...looks.map((k) => k.weight), 0.01);
  const WY = (w) => sBot - (w / wMax) * (sBot - sTop);
  root.append(svg("text", { x: L - 4, y: sBot, "text-anchor": "end" }, "weight"));
  const steps = looks.flatMap((k, i) => [...(i ? [`${X(xOf(k))},${WY(looks[i - 1].weight)}`] : []), `${X(xOf(k))},${WY(k.weight)}`]);
  root.append(svg("polyline", { class: "weights", points: steps.join(" ") }));  // a step line: a weight holds until changed
  looks.forEach((k, i) => {
    if (i > 0 && looks[i - 1].weight === k.weight) return;
    root.append(svg("text", { x: X(xOf(k)) + 3, y: WY(k.weight) - 2, class: "weight-label" }, pct(k.weight)));
  });
  // Legend, right of the plot.
  const legend = [["estimate", "#2f5bd3"], ...Object.entries(VERDICT_COLORS).map(([a, c]) => [a.replace("_", " "), c])];
  legend.forEach(([words, color], i) => {
    const y = T + 40 + i * 14;
    root.append(svg("circle", { cx: right + 30, cy: y - 3, r: 3.5, fill: color }), svg("text", { x: right + 38, y }, words));
  });
  root.append(svg("rect", { x: right + 26, y: T + 40 + legend.length * 14 - 9, width: 8, height: 8, class: "band" }),
    svg("text", { x: right + 38, y: T + 40 + legend.length * 14 }, "bounds"));
  return root;
}
