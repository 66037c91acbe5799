// A line chart as inline SVG: a series of {step, value} (and maybe a second); no chart library to ship or build.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return Number(v.toPrecision(4)).toString();
}

// second: an optional {name, points} drawn over the first on the same axes (a job's eval_loss over
// its loss), dashed, with a legend.
export function lineChart(title, points, second = null) {
  const W = 400, H = 200, L = 52, R = 10, T = 22, B = 24;
  const other = second && second.points.length ? second : null;
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title,
                           "data-metric": title, "data-points": String(points.length),
                           ...(other ? { "data-second": other.name, "data-second-points": String(other.points.length) } : {}) });
  root.append(svg("text", { x: L, y: 14, "font-weight": "600" }, `${title} (${points.length} points)`));
  if (!points.length) return root;
  const { X, Y } = frame(root, other ? points.concat(other.points) : points, { W, H, L, R, T, B, stepY: H - 6 });
  const series = (pts, cls, color) => {
    root.append(svg("polyline", { class: cls, points: pts.map((p) => `${X(p.step)},${Y(p.value)}`).join(" ") }));
    if (pts.length === 1) root.append(svg("circle", { class: cls, cx: X(pts[0].step), cy: Y(pts[0].value), r: 3, fill: color }));
  };
  series(points, "first", "#2f5bd3");
  if (other) {
    series(other.points, "second", "#c2410c");
    root.append(svg("text", { x: W - R, y: 14, "text-anchor": "end", class: "legend" }, `— ${title}   - - ${other.name}`));
  }
  return root;
}

// The axes of a step/value chart with their end labels, scaled to ``all`` points; returns the
// scales. ``stepY``: where the step labels go (under the plot area); ``xLabel``: their words.
function frame(root, all, { W, H, L, R, T, B, stepY }, label = fmt, xLabel = (x) => `step ${x}`) {
  const xs = all.map((p) => p.step), ys = all.map((p) => p.value);
  let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  if (x0 === x1) x1 = x0 + 1;
  if (y0 === y1) { y0 -= Math.abs(y0) * 0.1 || 1; y1 += Math.abs(y1) * 0.1 || 1; }
  root.append(svg("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#d9dee7" }));
  root.append(svg("line", { x1: L, y1: T, x2: L, y2: H - B, stroke: "#d9dee7" }));
  root.append(svg("text", { x: 4, y: T + 4 }, label(y1)));
  root.append(svg("text", { x: 4, y: H - B }, label(y0)));
  root.append(svg("text", { x: L, y: stepY }, xLabel(x0)));
  root.append(svg("text", { x: W - R, y: stepY, "text-anchor": "end" }, xLabel(x1)));
  return {
    X: (x) => L + ((x - x0) / (x1 - x0)) * (W - L - R),
    Y: (y) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B),
  };
}

// Several runs' series of one metric on shared axes: ``lines`` = [{id, color, points}] (those with
// points), a polyline per run (class "run", data-job) and a legend of run ids (or each line's
// ``name``). ``xLabel``: the words of an x value (default "step N"; usage charts: a day).
export function overlayChart(title, lines, label = fmt, xLabel = undefined) {
  const W = 420, H = 220, L = 52, R = 10, T = 22, B = 40;
  const root = svg("svg", { class: "chart overlay", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title,
    "data-metric": title, "data-lines": String(lines.length) });
  root.append(svg("text", { x: L, y: 14, "font-weight": "600" }, title));
  const { X, Y } = frame(root, lines.flatMap((l) => l.points), { W, H, L, R, T, B, stepY: H - B + 14 }, label, xLabel);
  lines.forEach((l, i) => {
    const pts = l.points.map((p) => `${X(p.step)},${Y(p.value)}`).join(" ");
    root.append(svg("polyline", { class: "run", "data-job": String(l.id), points: pts, style: `stroke: ${l.color}` }));
    if (l.points.length === 1) root.append(svg("circle", { cx: X(l.points[0].step), cy: Y(l.points[0].value), r: 3, fill: l.color }));
    root.append(svg("text", { x: L + i * ((W - L - R) / lines.length), y: H - 6, style: `fill: ${l.color}`, class: "legend" }, l.name ?? `#${l.id}`));
  });
  return root;
}

// Horizontal bars: [{label, value}] (usage by group), largest first as given.
export function barChart(title, bars) {
  const W = 400, row = 18, L = 150, R = 60, T = 22;
  const H = T + Math.max(1, bars.length) * row + 6;
  const root = svg("svg", { class: "chart bars", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title,
                           "data-metric": title, "data-points": String(bars.length), style: `height: ${H}px` });
  root.append(svg("text", { x: 4, y: 14, "font-weight": "600" }, title));
  const max = Math.max(0, ...bars.map((b) => b.value)) || 1;
  bars.forEach((b, i) => {
    const y = T + i * row;
    root.append(svg("text", { x: L - 4, y: y + 12, "text-anchor": "end" }, String(b.label).slice(0, 26)));
    root.append(svg("rect", { x: L, y: y + 2, height: row - 6, width: Math.max(1, ((W - L - R) * b.value) / max), fill: "#2f5bd3" }));
    root.append(svg("text", { x: L + ((W - L - R) * b.value) / max + 4, y: y + 12 }, fmt(b.value)));
  });
  return root;
}
