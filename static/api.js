// nfhub page: the access token and calls to the JSON API.
import { fmtBytes } from "./ui.js";

const TOKEN_KEY = "nfhub.token";

export function getToken() {
  try {
    return localStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

export function setToken(token) {
  localStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  try {
    localStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage disabled: nothing stored either */
  }
}

export class ApiError extends Error {
  constructor(status, message, details) {
    super(message);
    this.status = status;
    this.details = details || null;
  }
}

/** What went wrong, in words a user can act on. */
export function friendlyError(err) {
  if (!(err instanceof ApiError)) return err && err.message ? err.message : String(err);
  switch (err.status) {
    case 0: return "The server cannot be reached. Check your connection and try again.";
    case 401: return "Your session has ended. Please log in again.";
    case 403: return `Not allowed: ${err.message}`;
    case 413: return tooLarge(err.message);
    case 507: return "The server's disk is full, so nothing was saved. Ask your administrator to free some space.";
    case 500: return "The server ran into an internal error. Try again; if it keeps happening, tell your administrator.";
    default: return err.message || `Request failed (HTTP ${err.status})`;
  }
}

function tooLarge(message) {
  const m = /limit of (\d+) bytes/.exec(message || "");
  if (m) return `Too large: this server accepts files of at most ${fmtBytes(Number(m[1]))}.`;
  return "Too large: the file is bigger than this server accepts.";
}

function url(path, query) {
  const u = new URL(path, location.origin);
  for (const [k, v] of Object.entries(query || {})) {
    if (v !== undefined && v !== null) u.searchParams.set(k, v);
  }
  return u.pathname + u.search;
}

export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    /* not JSON (a proxy's error page): fall back to the status text */
  }
  const message = (body && body.error) || response.statusText || `HTTP ${response.status}`;
  return new ApiError(response.status, message, body && body.details);
}

/** Calls the API; resolves with the JSON body; rejects with ApiError. A 401 logs the page out. */
export async function api(path, { method = "GET", json, query, signal, headers = {}, raw = false } = {}) {
  const init = { method, signal, headers: { ...headers }, cache: "no-store" };
  const token = getToken();
  if (token) init.headers["x-access-token"] = token;
  if (json !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (method === "POST") {
    init.headers["content-type"] = "application/json";
    init.body = "{}";
  }
  let response;
  try {
    response = await fetch(url(path, query), init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network error");
  }
  if (!response.ok && response.status !== 206) {
    const err = await errorFrom(response);
    if (response.status === 401 && token) window.dispatchEvent(new CustomEvent("nfhub:unauthorized"));
    throw err;
  }
  if (raw) return response;
  const text = await response.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** A URL a browser can open directly (downloads, event streams): GETs may carry the token as ?token=. */
export function tokenUrl(path, query) {
  return url(path, { ...query, token: getToken() });
}

export function downloadUrl(projectId, path) {
  return tokenUrl(`/api/projects/${projectId}/download`, { path });
}

export function joinPath(...parts) {
  return parts.filter((p) => p !== undefined && p !== null && p !== "").join("/").replace(/\/+/g, "/")
    .replace(/^\/|\/$/g, "");
}
