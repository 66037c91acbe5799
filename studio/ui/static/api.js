// The UI's one way to reach the studio: fetch with the user's key, errors turned into words.
const KEY = "studio.key";

export class ApiError extends Error {
  constructor(status, message, fields = [], body = null) {
    super(message);
    this.status = status;
    this.fields = fields; // [{field: "hyper.learning_rate", message}] from a 422
    this.body = body; // the problem+json document (a gate's refusal carries its verdict)
  }
}

export const auth = {
  get key() { return sessionStorage.getItem(KEY); },
  set(key, me) { sessionStorage.setItem(KEY, key); sessionStorage.setItem(KEY + ".me", JSON.stringify(me)); },
  get me() { try { return JSON.parse(sessionStorage.getItem(KEY + ".me")); } catch { return null; } },
  clear() { sessionStorage.removeItem(KEY); sessionStorage.removeItem(KEY + ".me"); },
};

function headers(extra = {}) {
  const h = { ...extra };
  if (auth.key) h["Authorization"] = `Bearer ${auth.key}`;
  return h;
}

// problem+json on /api/*, OpenAI's {"error": {...}} on /v1/*: both become "detail. Fix: fix".
async function errorOf(resp) {
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON: fall through */ }
  if (body && body.error && body.error.message) return new ApiError(resp.status, body.error.message);
  if (body && body.detail) {
    const text = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    return new ApiError(resp.status, body.fix ? `${text}. Fix: ${body.fix}` : text, body.errors || [], body);
  }
  return new ApiError(resp.status, `${resp.status} ${resp.statusText || "error"} from ${resp.url}`);
}

export async function request(path, { method = "GET", json, form, raw = false, signal, extraHeaders = {} } = {}) {
  const sentWith = auth.key;  // the session this request belongs to
  const init = { method, headers: headers(extraHeaders), signal };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `cannot reach the studio at ${location.origin} (${e.message}). Is it up? (studio status)`);
  }
  if (!resp.ok) {
    const err = await errorOf(resp);
    // Only a refusal of the session still in use ends it: a page of a session that has just logged
    // out can have a request in flight, whose late 401 must not log out the key that came next.
    if (resp.status === 401 && auth.key && auth.key === sentWith) {
      auth.clear();
      location.hash = "#/login";
    }
    throw err;
  }
  return raw ? resp : resp.json();
}

export const get = (path, opts) => request(path, opts);
export const post = (path, json, opts = {}) => request(path, { ...opts, method: "POST", json });

// Reads a text/event-stream response, calling onEvent(event, data) per event until it ends.
export async function readSSE(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(event, data.join("\n"));
    }
  }
}
