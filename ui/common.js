// Small helpers shared by the pages: building DOM nodes and calling the JSON API.
// Every piece of server data goes into the page as text (textContent), never as HTML.

// el("p", {class: "x", dataset: {testid: "y"}}, "text", childNode, …)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && key !== "list") node[key] = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// An error from the API: `status` is the HTTP status (0 when the network failed), `message`
// the server's own words when it sent some.
export class ApiError extends Error {
  constructor(status, message, retryAfterSeconds = null) {
    super(message);
    this.status = status;
    this.retryAfterSeconds = retryAfterSeconds;
  }
}

export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "Can't reach the server. Check your connection.");
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;  // an empty or non-JSON body
  }
  if (!response.ok) {
    const retryAfter = Number(response.headers.get("Retry-After"));
    throw new ApiError(response.status, data?.error?.message || `HTTP ${response.status}`,
                       Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter : null);
  }
  return { data, headers: response.headers, status: response.status };
}

// A random id for Idempotency-Key (randomUUID needs a secure context; plain http on a LAN
// address is not one, so fall back to getRandomValues).
export function randomId() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Storage can throw (private mode, quota, disabled cookies): the page still works without it.
export const store = {
  get(area, key) {
    try { return area.getItem(key); } catch { return null; }
  },
  set(area, key, value) {
    try { area.setItem(key, value); } catch { /* the page goes on without persistence */ }
  },
  remove(area, key) {
    try { area.removeItem(key); } catch { /* as above */ }
  },
};
