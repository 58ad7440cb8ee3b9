// The REST API client: every call goes to /api/v1 with the bearer token kept in sessionStorage.
// A 401 asks for the token once (a dialog), stores it for this tab, and retries the call.

const TOKEN_KEY = "helios.token";
const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || "http_" + status;
    this.details = error.details || [];
  }
}

let asking = null; // one token prompt at a time, shared by the calls that wait for it

function askToken(problem) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  error.hidden = !problem;
  error.textContent = problem || "";
  input.value = "";
  asking = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      asking = null;
      const token = input.value.trim();
      if (token) {
        sessionStorage.setItem(TOKEN_KEY, token);
        document.getElementById("forget-token").hidden = false;
      }
      resolve(Boolean(token));
    }, { once: true });
  });
  dialog.showModal();
  return asking;
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

export function hasToken() {
  return sessionStorage.getItem(TOKEN_KEY) !== null;
}

// method, path under /api/v1 (with its query), optional JSON body -> the parsed answer, or ApiError.
export async function api(method, path, body) {
  for (let attempt = 0; ; attempt++) {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = typeof body === "string" ? body : JSON.stringify(body);
    }
    const response = await fetch(API + path, init);
    const text = await response.text();
    let parsed = null;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      parsed = null;
    }
    if (response.status === 401 && attempt < 5) {
      const now = sessionStorage.getItem(TOKEN_KEY);
      if (now !== null && now !== token) continue; // another call got a new token meanwhile
      if (token) forgetToken();
      const given = await askToken(token ? "That token was refused." : "");
      if (given) continue;
    }
    if (!response.ok) throw new ApiError(response.status, parsed);
    return parsed;
  }
}
