// nfhub page: start-up, login, the top bar and the router (#/…). No build step: plain ES modules.
import { TokensView, accountMenu } from "./account.js";
import { ApiError, api, clearToken, friendlyError, getToken, setToken } from "./api.js";
import { ProjectView } from "./project.js";
import { ProjectsView } from "./projects.js";
import { button, h, replace } from "./ui.js";

// 1. A login hands the token back in the address bar (?token=…): keep it, and remove it from the address bar (and so
//    from history, bookmarks and screen shares) before anything else happens.
const params = new URLSearchParams(location.search);
const handedToken = params.get("token");
const loginError = params.get("error");
if (handedToken || loginError) {
  if (handedToken) setToken(handedToken);
  params.delete("token");
  params.delete("error");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
}

const LOGIN_ERRORS = {
  invalid_state: "The login took too long or was started in another tab. Please try again.",
  invalid_id_token: "The identity provider's answer could not be verified. Please try again.",
  provider_unavailable: "The identity provider cannot be reached right now. Try again in a moment.",
  access_denied: "The login was cancelled or denied at the identity provider.",
  account_disabled: "This account is disabled. Ask your administrator.",
  login_failed: "The login did not succeed. Please try again.",
};

const main = document.getElementById("main");
const userMenu = document.getElementById("user-menu");
const state = { user: null, view: null };

window.nfhub = { config: { chunkThreshold: 64 * 1024 * 1024, chunkSize: 16 * 1024 * 1024 } };

// ---- login ------------------------------------------------------------------------------------------------------

async function showLogin(message, kind = "error") {
  disposeView();
  state.user = null;
  replace(userMenu);
  document.title = "Log in · nfhub";
  const card = h("section", { class: "login-card card", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title", class: "login-title" }, "Log in"),
    h("p", { class: "muted" }, "Run Nextflow pipelines on your data, from the browser."),
    message ? h("p", { class: `notice notice-${kind}`, role: kind === "error" ? "alert" : "status" }, message) : null);
  replace(main, h("div", { class: "login-wrap" }, card));
  let providers = {};
  try {
    providers = await api("/api/users/login-providers");
  } catch (err) {
    card.append(h("p", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
  }
  const openid = Object.entries(providers.openid || {});
  const local = Object.entries(providers.local || {});
  if (openid.length) {
    card.append(h("div", { class: "login-openid" }, openid.map(([name, description]) =>
      h("a", { class: "btn btn-primary btn-block", href: `/api/users/openid/${encodeURIComponent(name)}/login` },
        description || name))));
  }
  if (openid.length && local.length) card.append(h("div", { class: "divider" }, h("span", {}, "or")));
  for (const [name, description] of local) card.append(localForm(name, description, local.length > 1));
  card.append(h("details", { class: "login-token" },
    h("summary", {}, "I have an access token"),
    tokenForm(),
    h("p", { class: "muted small" }, "The first start of nfhub prints a login link; ", h("code", {}, "nfhub token NAME"),
      " prints a token for a user.")));
  const first = card.querySelector("input, a.btn");
  if (first) first.focus();
}

function localForm(provider, description, showTitle) {
  const id = `login-${provider}`;
  const error = h("p", { class: "field-error", id: `${id}-error`, "aria-live": "assertive" });
  const user = h("input", { id: `${id}-user`, class: "input", name: "username", autocomplete: "username",
                            required: true, autocapitalize: "none", spellcheck: "false" });
  const pass = h("input", { id: `${id}-pass`, class: "input", name: "password", type: "password",
                            autocomplete: "current-password", required: true });
  const submit = button("Log in", { kind: "primary", type: "submit", class: "btn btn-primary btn-block" });
  const form = h("form", { class: "login-form", "aria-describedby": `${id}-error` },
    showTitle ? h("h2", { class: "h3" }, description || provider) : null,
    h("div", { class: "field" }, h("label", { class: "label", for: user.id }, "Username"), user),
    h("div", { class: "field" }, h("label", { class: "label", for: pass.id }, "Password"), pass),
    error, submit);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    if (!user.value || !pass.value) {
      error.textContent = "Enter your username and password.";
      (user.value ? pass : user).focus();
      return;
    }
    submit.disabled = true;
    try {
      const answer = await api(`/api/users/local/${encodeURIComponent(provider)}/login`, {
        method: "POST", json: { username: user.value, password: pass.value } });
      setToken(answer.token);
      await start();
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 401 ? "Wrong username or password."
        : friendlyError(err);
      pass.select();
      pass.focus();
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function tokenForm() {
  const input = h("input", { id: "login-token", class: "input mono", autocomplete: "off", spellcheck: "false" });
  const error = h("p", { class: "field-error", "aria-live": "assertive" });
  const form = h("form", { class: "login-form" },
    h("div", { class: "field" }, h("label", { class: "label", for: input.id }, "Access token"), input),
    error, button("Use token", { type: "submit" }));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const token = input.value.trim().replace(/^.*[?&]token=/, "");
    if (!token) return;
    setToken(token);
    try {
      await api("/api/users/me");
      await start();
    } catch (err) {
      clearToken();
      error.textContent = err instanceof ApiError && err.status === 401 ? "This token is not valid (any more)."
        : friendlyError(err);
    }
  });
  return form;
}

async function logout() {
  try {
    await api("/api/users/logout");
  } catch {
    /* already invalid: logging out locally is all there is to do */
  }
  clearToken();
  location.hash = "#/";
  showLogin("You have logged out.", "info");
}

// ---- top bar ----------------------------------------------------------------------------------------------------

function loggedOutEverywhere() {
  clearToken();
  location.hash = "#/";
  showLogin("You have logged out everywhere: all your sessions and personal API tokens have ended.", "info");
}

function renderUserMenu(user) {
  replace(userMenu,
    accountMenu(user, { logoutAll: loggedOutEverywhere }),
    button("Log out", { kind: "ghost", iconName: "logout", size: "sm", onclick: logout, class: "btn btn-ghost btn-sm" }));
}

// ---- router -----------------------------------------------------------------------------------------------------

function parseRoute() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const parts = hash.split("/").filter(Boolean).map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  if (parts[0] === "p" && /^\d+$/.test(parts[1] || "")) {
    const id = Number(parts[1]);
    const tab = parts[2] || "files";
    if (tab === "files") return { name: "project", id, tab, dir: parts.slice(3).join("/") };
    if (tab === "pipeline") return { name: "project", id, tab };
    if (tab === "runs") return { name: "project", id, tab, runId: parts[3] ? Number(parts[3]) : null };
    return { name: "project", id, tab: "files", dir: "" };
  }
  if (parts[0] === "tokens") return { name: "tokens" };
  return { name: "projects" };
}

function disposeView() {
  if (state.view) state.view.dispose();
  state.view = null;
}

function route() {
  if (!state.user) return;
  const r = parseRoute();
  if (r.name === "project" && state.view instanceof ProjectView && state.view.id === r.id) {
    state.view.show(r);
    return;
  }
  disposeView();
  if (r.name === "project") {
    state.view = new ProjectView(main, r.id);
    state.view.show(r);
  } else if (r.name === "tokens") {
    state.view = new TokensView(main);
  } else {
    state.view = new ProjectsView(main);
  }
}

async function start() {
  if (!getToken()) {
    showLogin(loginError ? LOGIN_ERRORS[loginError] || `Login failed (${loginError}).` : null);
    return;
  }
  try {
    const { user } = await api("/api/users/me");
    state.user = user;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      clearToken();
      showLogin("Your session has ended. Please log in again.");
    } else {
      replace(main, h("div", { class: "notice notice-error", role: "alert" }, friendlyError(err), " ",
        button("Retry", { size: "sm", onclick: start })));
    }
    return;
  }
  renderUserMenu(state.user);
  route();
}

window.addEventListener("hashchange", route);
window.addEventListener("nfhub:unauthorized", () => {
  if (!state.user) return;
  clearToken();
  showLogin("Your session has ended. Please log in again.");
});
window.addEventListener("beforeunload", (e) => {
  if (state.view && state.view.busy && state.view.busy()) {
    e.preventDefault();
    e.returnValue = "";
  }
});

document.querySelector(".skip-link").addEventListener("click", (e) => {
  e.preventDefault();
  const target = main.querySelector("h1") || main;
  target.setAttribute("tabindex", "-1");
  target.focus();
});

start();
