// The public API through the gateway's dashboard prefix: the session cookie names the caller, and every
// request that may change something carries the CSRF token from the page's <meta>.
const PREFIX = "/dashboard/api";
const CSRF = document.querySelector('meta[name="csrf-token"]').content;

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.error ? `${status}: ${body.error}` : `${status}`);
    this.status = status;
    this.body = body;
  }
}

export async function api(method, path, body) {
  const headers = {Accept: "application/json"};
  if (method !== "GET") headers["X-CSRF-Token"] = CSRF;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(PREFIX + path, {method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body)});
  if (resp.status === 401) {
    window.location.assign("/dashboard/login");
    throw new ApiError(401, {error: "the session has ended"});
  }
  const data = resp.headers.get("Content-Type")?.includes("json") ? await resp.json() : null;
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

export function query(params) {
  const out = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== "" && value != null) out.set(key, value);
  const text = out.toString();
  return text ? "?" + text : "";
}

export const eventsUrl = (path) => PREFIX + path;
