// nfhub page: sharing a project — who has access, add someone by user name or e-mail, change or remove access.
// Only the owner (or an admin) gets here; the server checks that again on every request.
import { ApiError, api, friendlyError } from "./api.js";
import { button, formField, h, modal, replace, sentence } from "./ui.js";

const ACCESS = [["read", "Read"], ["write", "Write"]];
const ACCESS_HINT = "Read: see the files, runs and logs, and download. Write: also upload, change the settings and run "
  + "the pipeline. Only the owner shares or deletes the project.";

function accessSelect(value, props = {}) {
  return h("select", { class: "input select", ...props },
    ACCESS.map(([key, label]) => h("option", { value: key, selected: key === value }, label)));
}

function person(name, email, badge) {
  return h("div", { class: "share-person" },
    h("span", { class: "avatar", "aria-hidden": "true" }, (name || "?").slice(0, 1).toUpperCase()),
    h("span", { class: "share-who" }, h("span", { class: "share-name" }, name, badge),
      email ? h("span", { class: "share-email muted small" }, email) : null));
}

/** The sharing dialog of a project; resolves when it is closed. */
export function shareDialog(project) {
  return modal((dialog, close) => {
    const status = h("p", { class: "share-status", role: "status", "aria-live": "polite" });
    const userField = formField("User name or e-mail", h("input", { id: "share-user", class: "input", type: "text",
      autocomplete: "off", autocapitalize: "none", spellcheck: "false", placeholder: "e.g. bob or bob@lab.example.org" }));
    const accessField = formField("Access", accessSelect("read", { id: "share-access" }));
    const submit = button("Share", { kind: "primary", type: "submit", iconName: "share" });
    const formError = h("p", { class: "field-error", role: "alert" });
    const form = h("form", { class: "share-form", novalidate: true, "aria-label": "Share with someone" },
      h("div", { class: "share-form-row" }, userField.el, accessField.el, h("div", { class: "share-submit" }, submit)),
      h("p", { class: "field-desc" }, ACCESS_HINT), formError);
    const list = h("ul", { class: "share-list", "aria-label": "People with access" },
      h("li", { class: "loading" }, "Loading…"));

    const say = (text) => {
      status.textContent = text;
    };

    async function load() {
      let shares;
      try {
        ({ shares } = await api(`/api/projects/${project.id}/shares`));
      } catch (err) {
        replace(list, h("li", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
        return;
      }
      replace(list,
        h("li", { class: "share-row", dataset: { user: project.owner } },
          person(project.owner, null, h("span", { class: "badge badge-info" }, "owner")),
          h("span", { class: "muted small share-owner-note" }, "Full access")),
        shares.map(row),
        shares.length ? null : h("li", { class: "share-empty muted small" }, "Not shared with anyone yet."));
    }

    function row(share) {
      const select = accessSelect(share.access, { class: "input input-sm select", "aria-label": `Access for ${share.user}` });
      const remove = button(`Remove ${share.user}`, { kind: "ghost", iconName: "close", iconOnly: true, size: "sm" });
      const error = h("p", { class: "field-error share-row-error", role: "alert" });
      const li = h("li", { class: "share-row", dataset: { user: share.user } },
        person(share.user, share.email), h("div", { class: "share-controls" }, select, remove), error);
      select.addEventListener("change", async () => {
        error.textContent = "";
        select.disabled = true;
        try {
          await api(`/api/projects/${project.id}/share`, { method: "POST",
            json: { user: share.user, access: select.value } });
          share.access = select.value;
          say(`${share.user} now has ${select.value} access.`);
        } catch (err) {
          select.value = share.access;
          error.textContent = friendlyError(err);
        } finally {
          select.disabled = false;
        }
      });
      remove.addEventListener("click", async () => {
        error.textContent = "";
        remove.disabled = true;
        try {
          await api(`/api/projects/${project.id}/unshare`, { method: "POST", json: { user: share.user } });
          say(`${share.user} no longer has access.`);
          await load();
          userField.control.focus();
        } catch (err) {
          error.textContent = friendlyError(err);
          remove.disabled = false;
        }
      });
      return li;
    }

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      userField.setError("");
      accessField.setError("");
      formError.textContent = "";
      const who = userField.control.value.trim();
      if (!who) {
        userField.setError("Enter a user name or e-mail address.");
        userField.control.focus();
        return;
      }
      submit.disabled = true;
      try {
        const access = accessField.control.value;
        await api(`/api/projects/${project.id}/share`, { method: "POST", json: { user: who, access } });
        userField.control.value = "";
        say(`${who} now has ${access} access.`);
        await load();
      } catch (err) {
        if (err instanceof ApiError && err.status === 422 && err.details && (err.details.user || err.details.access)) {
          if (err.details.user) userField.setError(sentence(err.message));
          if (err.details.access) accessField.setError(sentence(err.message));
        } else {
          formError.textContent = friendlyError(err);
        }
      } finally {
        submit.disabled = false;
        userField.control.focus();
      }
    });

    dialog.append(
      h("div", { class: "dialog-head" }, h("h2", { class: "dialog-title" }, `Share “${project.name}”`),
        button("Close", { kind: "ghost", iconName: "close", iconOnly: true, onclick: () => close() })),
      form,
      h("h3", { class: "h4" }, "People with access"),
      list, status,
      h("div", { class: "dialog-actions" }, button("Done", { onclick: () => close() })));
    load();
    queueMicrotask(() => userField.control.focus());
  }, { className: "dialog-share", label: `Share ${project.name}` });
}
