// A small YAML writer for recipes (nested objects, lists, scalars): what the recipe files look like.
const PLAIN = /^[A-Za-z0-9_./@+-][A-Za-z0-9_./@+ -]*$/;
const RESERVED = /^(true|false|null|yes|no|on|off|~|[-+]?[0-9.eE+-]+)$/i;

function scalar(v) {
  if (v === null || v === undefined) return "null";
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  const s = String(v);
  return PLAIN.test(s) && !RESERVED.test(s) && !s.endsWith(" ") ? s : JSON.stringify(s);
}

export function toYaml(value, indent = "") {
  if (Array.isArray(value)) {
    if (!value.length) return "[]\n";
    return value.map((v) => (typeof v === "object" && v !== null
      ? `${indent}- ${toYaml(v, indent + "  ").trimStart()}` : `${indent}- ${scalar(v)}\n`)).join("");
  }
  if (typeof value === "object" && value !== null) {
    const keys = Object.keys(value);
    if (!keys.length) return "{}\n";
    return keys.map((k) => {
      const v = value[k];
      if (typeof v === "object" && v !== null && (Array.isArray(v) ? v.length : Object.keys(v).length)) {
        return `${indent}${k}:\n${toYaml(v, indent + "  ")}`;
      }
      return `${indent}${k}: ${typeof v === "object" && v !== null ? (Array.isArray(v) ? "[]" : "{}") : scalar(v)}\n`;
    }).join("");
  }
  return `${indent}${scalar(value)}\n`;
}
