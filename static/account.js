// nfhub page: the account — the menu under the user's name, personal API tokens (#/tokens), changing one's password,
// and logging out everywhere.
import { ApiError, api, friendlyError } from "./api.js";
import { button, confirmDialog, emptyState, formField, h, icon, modal, replace, sentence, timeEl, toast } from "./ui.js";

const LIFETIMES = [["1d", "1 day"], ["30d", "30 days"], ["90d", "90 days"], ["365d", "1 year"]];
const MIN_PASSWORD = 8;

// ---- the account menu (a menu button: arrow keys move, Escape closes and gives the focus back) --------------------

/** The user's name in the top bar, opening a menu; actions: { logoutAll }. */
export function accountMenu(user, { logoutAll }) {
  const name = user.display_name || user.name;
  const trigger = h("button", { type: "button", class: "user-chip account-btn", id: "account-button",
    "aria-haspopup": "menu", "aria-expanded": "false", "aria-controls": "account-menu",
    "aria-label": `${name}: account menu`, title: user.email || user.name },
  h("span", { class: "avatar", "aria-hidden": "true" }, (name || "?").slice(0, 1).toUpperCase()),
  h("span", { class: "user-name" }, name), user.is_admin ? h("span", { class: "badge badge-info" }, "admin") : null,
  icon("chevronDown"));
  const item = (label, iconName, props) => h(props.href ? "a" : "button",
    { class: ["menu-item", props.danger ? "menu-item-danger" : null], role: "menuitem", tabindex: "-1",
      type: props.href ? null : "button", href: props.href, onclick: props.onclick },
    icon(iconName), h("span", {}, label));
  const local = user.provider === "local";
  const list = h("div", { id: "account-menu", class: "menu-items", role: "menu", "aria-labelledby": trigger.id },
    item("API tokens", "key", { href: "#/tokens" }),
    local ? item(user.has_password === false ? "Set a password…" : "Change password…", "lock",
      { onclick: () => changePassword(user) }) : null,
    h("div", { class: "menu-sep", role: "separator" }),
    item("Log out everywhere…", "logout", { danger: true, onclick: () => logoutEverywhere(logoutAll) }));
  const menu = h("div", { class: "account-menu", hidden: true },
    h("div", { class: "menu-who" }, h("span", { class: "menu-who-name" }, name),
      h("span", { class: "muted small" }, user.email || (local ? "local account" : user.provider))),
    list);
  const items = () => [...list.querySelectorAll("[role=menuitem]")];

  const outside = (e) => {
    if (!wrap.contains(e.target)) setOpen(false);
  };
  const navigated = () => setOpen(false);
  // The listeners live only while the menu is open, so a top bar drawn again after a new login leaves none behind.
  function setOpen(open, focus) {
    menu.hidden = !open;
    trigger.setAttribute("aria-expanded", String(open));
    if (open) {
      document.addEventListener("pointerdown", outside);
      window.addEventListener("hashchange", navigated);
      const all = items();
      all[focus === "last" ? all.length - 1 : 0].focus();
    } else {
      document.removeEventListener("pointerdown", outside);
      window.removeEventListener("hashchange", navigated);
    }
  }
  trigger.addEventListener("click", () => setOpen(menu.hidden));
  trigger.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      setOpen(true, e.key === "ArrowUp" ? "last" : "first");
    }
  });
  menu.addEventListener("click", (e) => {
    if (e.target.closest("[role=menuitem]")) setOpen(false);
  });
  menu.addEventListener("keydown", (e) => {
    const all = items();
    const i = all.indexOf(document.activeElement);
    let next = null;
    if (e.key === "ArrowDown") next = all[(i + 1) % all.length];
    else if (e.key === "ArrowUp") next = all[(i - 1 + all.length) % all.length];
    else if (e.key === "Home") next = all[0];
    else if (e.key === "End") next = all[all.length - 1];
    else if (e.key === "Escape") {
      e.preventDefault();
      setOpen(false);
      trigger.focus();
      return;
    } else if (e.key === "Tab") {
      setOpen(false);
      return;
    } else if (e.key === " " && document.activeElement.tagName === "A") {
      e.preventDefault();
      document.activeElement.click();
      return;
    }
    if (next) {
      e.preventDefault();
      next.focus();
    }
  });
  const wrap = h("div", { class: "account" }, trigger, menu);
  return wrap;
}

// ---- change password ------------------------------------------------------------------------------------------------

export function changePassword(user = {}) {
  const first = user.has_password === false;  // the first admin logs in by URL and has no password yet
  return modal((dialog, close) => {
    const pw = (autocomplete) => h("input", { class: "input", type: "password", autocomplete, spellcheck: "false" });
    const old = formField("Current password", pw("current-password"));
    const fresh = formField("New password", pw("new-password"), { hint: `At least ${MIN_PASSWORD} characters.` });
    const again = formField("Repeat the new password", pw("new-password"));
    const formError = h("p", { class: "field-error", role: "alert" });
    const ok = button("Change password", { kind: "primary", type: "submit" });
    const form = h("form", { class: "dialog-form", novalidate: true },
      h("h2", { class: "dialog-title" }, first ? "Set a password" : "Change password"),
      h("div", {}, first ? null : old.el, fresh.el, again.el), formError,
      h("div", { class: "dialog-actions" }, button("Cancel", { onclick: () => close(false) }), ok));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      for (const f of [old, fresh, again]) f.setError("");
      formError.textContent = "";
      const value = fresh.control.value;
      let bad = null;
      if (value.length < MIN_PASSWORD) bad = [fresh, `Use at least ${MIN_PASSWORD} characters.`];
      else if (again.control.value !== value) bad = [again, "The two new passwords are not the same."];
      if (bad) {
        bad[0].setError(bad[1]);
        bad[0].control.focus();
        return;
      }
      ok.disabled = true;
      try {
        const json = { new_password: value };
        if (old.control.value) json.old_password = old.control.value;
        await api("/api/users/password", { method: "POST", json });
        toast("Your password was changed. Use the new one next time you log in.", "success");
        close(true);
      } catch (err) {
        ok.disabled = false;
        if (err instanceof ApiError && err.status === 403 && /old password/.test(err.message)) {
          old.setError("The current password is wrong.");
          old.control.select();
          old.control.focus();
        } else if (err instanceof ApiError && err.status === 422 && err.details && err.details.old_password) {
          old.setError("Enter your current password.");
          old.control.focus();
        } else if (err instanceof ApiError && err.status === 422 && err.details && err.details.new_password) {
          fresh.setError(sentence(err.message));
          fresh.control.focus();
        } else {
          formError.textContent = err instanceof ApiError && err.status === 422 ? sentence(err.message)
            : err instanceof ApiError && err.status === 429 ? sentence(err.message) : friendlyError(err);
        }
      }
    });
    dialog.append(form);
    queueMicrotask(() => old.control.focus());
  }, { label: "Change password" });
}

// ---- log out everywhere -----------------------------------------------------------------------------------------------

async function logoutEverywhere(after) {
  const ok = await confirmDialog({
    title: "Log out everywhere?",
    message: "Every session of yours ends, on every device, and all your personal API tokens stop working, so "
      + "scripts that use them are refused. You will need to log in again, here too.",
    confirmLabel: "Log out everywhere", danger: true,
  });
  if (!ok) return;
  try {
    await api("/api/users/logout-all", { method: "POST" });
  } catch (err) {
    toast(friendlyError(err), "error");
    return;
  }
  after();
}

// ---- personal API tokens (#/tokens) -----------------------------------------------------------------------------------

const DAY_FMT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium" });

/** A date without its time of day (token lifetimes are counted in days), the full moment as tooltip. */
function dayEl(value) {
  const d = value ? new Date(value) : null;
  if (!d || Number.isNaN(d.getTime())) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: d.toISOString(), title: d.toLocaleString() }, DAY_FMT.format(d));
}

function tokenState(t) {
  if (t.revoked) return h("span", { class: "badge badge-bad", dataset: { state: "revoked" } }, "Revoked");
  if (t.expired) return h("span", { class: "badge badge-none", dataset: { state: "expired" } }, "Expired");
  return h("span", { class: "badge badge-ok", dataset: { state: "active" } }, "Active");
}

async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // No clipboard API (a plain-http address) or no permission: the old way, from the selected field.
    input.focus();
    input.select();
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
}

export class TokensView {
  constructor(main) {
    this.main = main;
    this.disposed = false;
    document.title = "API tokens · nfhub";
    this.nameField = formField("Name", h("input", { id: "token-name", class: "input", type: "text", autocomplete: "off",
      maxlength: "200", placeholder: "e.g. cluster sync" }), { hint: "What the token is for, so you know which to revoke." });
    this.lifetimeField = formField("Expires after", h("select", { id: "token-lifetime", class: "input select" },
      LIFETIMES.map(([value, label]) => h("option", { value, selected: value === "30d" }, label))));
    this.createBtn = button("Create token", { kind: "primary", type: "submit", iconName: "plus" });
    this.formError = h("p", { class: "field-error", role: "alert" });
    const form = h("form", { class: "token-form card-pad", novalidate: true, "aria-labelledby": "token-new-heading" },
      h("div", { class: "token-form-row" }, this.nameField.el, this.lifetimeField.el,
        h("div", { class: "token-submit" }, this.createBtn)), this.formError);
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.create();
    });
    this.reveal = h("div", { class: "token-reveal-wrap" });
    this.listBox = h("div", {}, h("p", { class: "loading" }, "Loading tokens…"));
    this.count = h("span", { class: "muted small" });
    replace(main,
      h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Projects"),
        h("span", { class: "sep", "aria-hidden": "true" }, "/"), h("span", { "aria-current": "page" }, "API tokens")),
      h("div", { class: "page-head" }, h("div", {},
        h("h1", { class: "page-title", tabindex: "-1" }, "API tokens"),
        h("p", { class: "page-subtitle muted" }, "Personal tokens let scripts and command-line tools use nfhub as you. ",
          "Send one in the ", h("code", {}, "x-access-token"), " header."))),
      this.reveal,
      h("section", { class: "card", "aria-labelledby": "token-new-heading" },
        h("div", { class: "card-head" }, h("h2", { id: "token-new-heading", class: "h3" }, "New token")), form),
      h("section", { class: "card", "aria-labelledby": "token-list-heading" },
        h("div", { class: "card-head" }, h("h2", { id: "token-list-heading", class: "h3" }, "Your tokens"), this.count),
        this.listBox));
    this.load();
  }

  dispose() {
    this.disposed = true;
  }

  async load() {
    let tokens;
    try {
      ({ tokens } = await api("/api/users/tokens"));
    } catch (err) {
      if (!this.disposed) replace(this.listBox, h("p", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
      return;
    }
    if (this.disposed) return;
    this.render(tokens);
  }

  render(tokens) {
    const active = tokens.filter((t) => !t.revoked && !t.expired).length;
    this.count.textContent = `${active} active`;
    if (!tokens.length) {
      replace(this.listBox, emptyState("No tokens yet", "Create one above for a script or a command-line tool."));
      return;
    }
    // Newest first: the one just made is where the eye is.
    const rows = [...tokens].reverse().map((t) => {
      const live = !t.revoked && !t.expired;
      return h("tr", { dataset: { tokenId: t.id, state: t.revoked ? "revoked" : t.expired ? "expired" : "active" } },
        h("th", { scope: "row", class: "token-name" }, t.name || h("span", { class: "muted" }, "unnamed")),
        h("td", { class: "col-md" }, dayEl(t.created_at)),
        h("td", {}, dayEl(t.expires_at)),
        h("td", {}, tokenState(t)),
        h("td", { class: "actions" }, live ? button("Revoke", { kind: "danger-ghost", size: "sm",
          "aria-label": `Revoke ${t.name || "unnamed token"}`, onclick: () => this.revoke(t) }) : null));
    });
    replace(this.listBox, h("div", { class: "table-scroll" }, h("table", { class: "table table-tokens" },
      h("caption", { class: "sr-only" }, "Your personal API tokens"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Name"), h("th", { scope: "col", class: "col-md" }, "Created"),
        h("th", { scope: "col" }, "Expires"), h("th", { scope: "col" }, "State"),
        h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
      h("tbody", {}, rows))));
  }

  async create() {
    this.nameField.setError("");
    this.lifetimeField.setError("");
    this.formError.textContent = "";
    const name = this.nameField.control.value.trim();
    if (!name) {
      this.nameField.setError("Give the token a name.");
      this.nameField.control.focus();
      return;
    }
    this.createBtn.disabled = true;
    try {
      const answer = await api("/api/users/tokens", { method: "POST",
        json: { name, lifetime: this.lifetimeField.control.value } });
      if (this.disposed) return;
      this.nameField.control.value = "";
      this.showToken(answer);
      await this.load();
    } catch (err) {
      const details = err instanceof ApiError && err.status === 422 ? err.details || {} : null;
      if (details && details.name) this.nameField.setError(sentence(err.message));
      else if (details && details.lifetime) this.lifetimeField.setError(sentence(err.message));
      else if (details || (err instanceof ApiError && err.status === 403)) this.formError.textContent = sentence(err.message);
      else this.formError.textContent = friendlyError(err);
    } finally {
      this.createBtn.disabled = false;
    }
  }

  /** The secret, shown this once: it is not stored anywhere the page could show it again. */
  showToken({ token, name, expires_at: expires }) {
    const field = h("input", { id: "new-token", class: "input mono token-value", readonly: true, value: token,
                               spellcheck: "false", autocomplete: "off" });
    const copied = h("span", { class: "token-copied", role: "status", "aria-live": "polite" });
    const copy = button("Copy", { iconName: "copy", onclick: async () => {
      const ok = await copyText(token, field);
      copied.textContent = ok ? "Copied to the clipboard." : "Select the token and copy it (Ctrl+C / ⌘C).";
    } });
    field.addEventListener("focus", () => field.select());
    const box = h("section", { class: "token-reveal", "aria-labelledby": "token-reveal-title" },
      h("div", { class: "token-reveal-title", id: "token-reveal-title" }, icon("alert"),
        h("span", {}, `Copy your new token “${name}” now`)),
      h("p", {}, "This is the only time it is shown: nfhub does not keep it, and you cannot see it again. ",
        "Treat it like a password; anyone who has it can act as you until it expires (",
        timeEl(expires), ") or you revoke it."),
      h("label", { class: "label", for: field.id }, "Your new token"),
      h("div", { class: "input-group" }, field, copy),
      copied,
      h("p", { class: "small muted" }, "Use it like this, with the token in the variable NFHUB_TOKEN:"),
      h("pre", { class: "code token-example" }, `curl -H "x-access-token: $NFHUB_TOKEN" ${location.origin}/api/projects`),
      h("div", { class: "token-reveal-actions" },
        button("I have copied it", { onclick: () => {
          replace(this.reveal);
          this.nameField.control.focus();
        } })));
    replace(this.reveal, box);
    field.focus();
  }

  async revoke(t) {
    const ok = await confirmDialog({
      title: `Revoke “${t.name}”?`,
      message: "Scripts that use this token are refused from now on. This cannot be undone; create a new token if "
        + "you need one again.",
      confirmLabel: "Revoke token", danger: true,
    });
    if (!ok) return;
    try {
      await api(`/api/users/tokens/${encodeURIComponent(t.id)}/revoke`, { method: "POST" });
      toast(`The token “${t.name}” was revoked.`, "success");
    } catch (err) {
      toast(friendlyError(err), "error");
    }
    await this.load();
  }
}
