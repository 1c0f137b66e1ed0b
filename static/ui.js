// nfhub page: DOM helpers, formatting, dialogs, toasts, progress bars and status badges.
// Everything is built with DOM calls, never from HTML strings, so file names and log lines always stay text.

const SVG_NS = "http://www.w3.org/2000/svg";

/** h("button", {class: "btn", onclick: fn, "aria-label": "…"}, "text", child, [more]) → element */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = Array.isArray(value) ? value.filter(Boolean).join(" ") : value;
    } else if (key === "text") {
      el.textContent = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (key === "value" || key === "checked" || key === "selected" || key === "indeterminate") {
      el[key] = value;
    } else {
      el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

// A small icon set (24×24 strokes), drawn inline: no external assets.
const ICONS = {
  folder: "M3 7a2 2 0 0 1 2-2h4l2 2h8a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2z",
  file: "M14 3H7a2 2 0 0 0-2 2v14a2 2 0 0 0 2 2h10a2 2 0 0 0 2-2V8zM14 3v5h5",
  image: "M5 4h14a1 1 0 0 1 1 1v14a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V5a1 1 0 0 1 1-1zM4 16l5-5 4 4 3-3 4 4M15.5 8.5h.01",
  download: "M12 4v11M7 10l5 5 5-5M5 20h14",
  upload: "M12 16V5M7 10l5-5 5 5M5 20h14",
  trash: "M4 7h16M10 11v6M14 11v6M6 7l1 13h10l1-13M9 7V4h6v3",
  plus: "M12 5v14M5 12h14",
  edit: "M4 20h4L19 9l-4-4L4 16zM13 7l4 4",
  play: "M7 4l13 8-13 8z",
  stop: "M6 6h12v12H6z",
  resume: "M4 12a8 8 0 1 0 3-6.2M4 4v5h5",
  refresh: "M20 12a8 8 0 1 1-2.3-5.7M20 4v5h-5",
  close: "M6 6l12 12M18 6L6 18",
  help: "M12 21a9 9 0 1 0 0-18 9 9 0 0 0 0 18zM9.5 9a2.5 2.5 0 1 1 3.5 2.3c-.6.3-1 .9-1 1.6V14M12 17h.01",
  eye: "M2 12s3.5-7 10-7 10 7 10 7-3.5 7-10 7S2 12 2 12zM12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6z",
  logout: "M15 4h3a2 2 0 0 1 2 2v12a2 2 0 0 1-2 2h-3M10 16l-4-4 4-4M6 12h11",
  pipeline: "M5 6h4v4H5zM15 14h4v4h-4zM9 8h3a2 2 0 0 1 2 2v4a2 2 0 0 0 2 2",
  chevron: "M9 6l6 6-6 6",
  alert: "M12 3l10 18H2zM12 10v5M12 18h.01",
  check: "M5 12l5 5 9-10",
  folderPlus: "M3 7a2 2 0 0 1 2-2h4l2 2h8a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2zM12 10v6M9 13h6",
  folderUp: "M3 7a2 2 0 0 1 2-2h4l2 2h8a2 2 0 0 1 2 2v8a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2zM12 16v-6M9 13l3-3 3 3",
  share: "M9 11a3.5 3.5 0 1 0 0-7 3.5 3.5 0 0 0 0 7zM3 20a6 6 0 0 1 12 0M16 4.5a3.5 3.5 0 0 1 0 6.5M18 14.5a6 6 0 0 1 3 5.5",
  key: "M15 4a5 5 0 1 1-4.6 7L4 17.4V20h3v-2h2v-2h2l1.4-1.4A5 5 0 0 1 15 4zM16 8.5h.01",
  lock: "M6 11h12v9H6zM8.5 11V8a3.5 3.5 0 0 1 7 0v3M12 15v2",
  copy: "M9 9h10v11H9zM5 15V5a1 1 0 0 1 1-1h9",
  chevronDown: "M6 9l6 6 6-6",
};

export function icon(name, label) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("fill", "none");
  svg.setAttribute("stroke", "currentColor");
  svg.setAttribute("stroke-width", "1.8");
  svg.setAttribute("stroke-linecap", "round");
  svg.setAttribute("stroke-linejoin", "round");
  if (label) {
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
  } else {
    svg.setAttribute("aria-hidden", "true");
  }
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", ICONS[name] || ICONS.file);
  svg.append(path);
  return svg;
}

/** A button with an optional icon; `label` is its visible text (or, with iconOnly, its accessible name). */
export function button(label, { kind = "secondary", iconName, iconOnly = false, size, onclick, type = "button",
                                 disabled = false, ...rest } = {}) {
  const cls = ["btn", `btn-${kind}`, size ? `btn-${size}` : null, iconOnly ? "btn-icon" : null];
  const el = h("button", { type, class: cls, onclick, disabled, ...rest });
  if (iconName) el.append(icon(iconName));
  if (iconOnly) {
    el.setAttribute("aria-label", label);
    el.title = label;
  } else {
    el.append(h("span", {}, label));
  }
  return el;
}

// ---- formatting -------------------------------------------------------------------------------------------------

export function fmtBytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "—";
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB", "PiB"];
  let value = n / 1024;
  let i = 0;
  while (value >= 1023.95 && i < units.length - 1) {
    value /= 1024;
    i += 1;
  }
  const shown = value < 9.95 ? value.toFixed(1) : String(Math.round(value));
  return `${shown.replace(/\.0$/, "")} ${units[i]}`;
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  let s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const h_ = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  s %= 60;
  return h_ ? `${h_} h ${m} min` : `${m} min ${s} s`;
}

function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const d = typeof value === "number" ? new Date(value) : new Date(value);
  return Number.isNaN(d.getTime()) ? null : d;
}

const DATE_FMT = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
const TIME_FMT = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });

export function fmtDate(value) {
  const d = toDate(value);
  return d ? DATE_FMT.format(d) : "—";
}

export function fmtTime(value) {
  const d = toDate(value);
  return d ? TIME_FMT.format(d) : "—";
}

/** A <time> element: readable text, machine-readable datetime, the full date as tooltip. */
export function timeEl(value, short = false) {
  const d = toDate(value);
  if (!d) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: d.toISOString(), title: d.toLocaleString() }, short ? fmtRelative(d) : fmtDate(d));
}

export function fmtRelative(d) {
  const seconds = (Date.now() - d.getTime()) / 1000;
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return DATE_FMT.format(d);
}

export function fmtPercent(v) {
  return v === null || v === undefined ? "—" : `${Math.round(v)} %`;
}

/** Inline `code` spans of help texts as <code>; everything else stays text. */
export function richText(text) {
  const out = [];
  String(text || "").split(/(`[^`]+`)/).forEach((part) => {
    if (part.startsWith("`") && part.endsWith("`") && part.length > 2) out.push(h("code", {}, part.slice(1, -1)));
    else if (part) out.push(part);
  });
  return out;
}

// ---- status and progress ------------------------------------------------------------------------------------------

export const ACTIVE = new Set(["queued", "starting", "running"]);

const STATUS_TEXT = {
  queued: "Queued", starting: "Starting", running: "Running", succeeded: "Succeeded", failed: "Failed",
  cancelled: "Cancelled", lost: "Lost",
  COMPLETED: "Completed", FAILED: "Failed", RUNNING: "Running", SUBMITTED: "Submitted", NEW: "New",
  ABORTED: "Aborted", CACHED: "Cached",
};

export function statusBadge(status) {
  if (!status) return h("span", { class: "badge badge-none" }, "Not run");
  const key = String(status).toLowerCase();
  const cls = { succeeded: "ok", completed: "ok", cached: "info", failed: "bad", lost: "bad", aborted: "warn",
                cancelled: "warn", running: "run", starting: "run", submitted: "run", queued: "wait", new: "wait" }[key];
  return h("span", { class: `badge badge-${cls || "none"}`, dataset: { status: key } },
    ACTIVE.has(key) || key === "running" || key === "submitted" ? h("span", { class: "pulse", "aria-hidden": "true" }) : null,
    STATUS_TEXT[status] || status);
}

/** The fraction done (0…1), or null for "working, amount unknown". */
export function progressFraction(status, submitted, completed) {
  if (status === "succeeded") return 1;
  // Nothing done yet while the run is active: show that it works rather than an empty bar that looks stuck.
  if (!submitted || (!completed && ACTIVE.has(status))) return ACTIVE.has(status) ? null : 0;
  // All submitted tasks may be done while more are still to come: only a finished run shows a full bar.
  return Math.min(ACTIVE.has(status) ? 0.99 : 1, completed / submitted);
}

/** How long a run took, or has been going so far. */
export function runDuration(run) {
  if (!run) return null;
  if (ACTIVE.has(run.status)) {
    const start = Date.parse(run.started_at || run.created_at || "");
    return Number.isNaN(start) ? run.duration : Math.max(0, Date.now() - start);
  }
  return run.duration;
}

/** A progress bar (role=progressbar) with set(status, submitted, completed). */
export function progressBar(label) {
  const fill = h("div", { class: "progress-fill" });
  const el = h("div", { class: "progress", role: "progressbar", "aria-label": label, "aria-valuemin": "0",
                        "aria-valuemax": "100" }, fill);
  const api = {
    el,
    set(status, submitted, completed) {
      const f = progressFraction(status, submitted, completed);
      el.dataset.status = status || "none";
      if (f === null) {
        el.classList.add("indeterminate");
        el.removeAttribute("aria-valuenow");
        el.setAttribute("aria-valuetext", "starting");
        fill.style.setProperty("--value", "30%");
      } else {
        const pct = Math.round(f * 100);
        el.classList.remove("indeterminate");
        el.setAttribute("aria-valuenow", String(pct));
        el.setAttribute("aria-valuetext", `${pct} %`);
        fill.style.setProperty("--value", `${pct}%`);
      }
      return f;
    },
  };
  api.set(null, 0, 0);
  return api;
}

// ---- toasts and dialogs -------------------------------------------------------------------------------------------

export function toast(message, kind = "info", timeout = 5000) {
  const box = document.getElementById("toasts");
  const close = button("Dismiss", { kind: "ghost", iconName: "close", iconOnly: true, size: "sm" });
  const el = h("div", { class: `toast toast-${kind}`, role: kind === "error" ? "alert" : "status" },
    h("span", { class: "toast-text" }, message), close);
  const remove = () => el.remove();
  close.addEventListener("click", remove);
  box.append(el);
  if (timeout && kind !== "error") setTimeout(remove, timeout);
  if (kind === "error") setTimeout(remove, 12000);
  return el;
}

/** Opens a modal <dialog>; build(dialog, close) fills it; resolves with what close() was given. */
export function modal(build, { className = "", label } = {}) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: ["dialog", className], "aria-label": label });
    let result;
    const close = (value) => {
      result = value;
      dialog.close();
    };
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(result);
    });
    // A click on the backdrop (the dialog element itself, outside its content box) closes it.
    dialog.addEventListener("mousedown", (e) => {
      if (e.target === dialog) close(undefined);
    });
    build(dialog, close);
    document.body.append(dialog);
    dialog.showModal();
  });
}

export function confirmDialog({ title, message, confirmLabel = "OK", danger = false }) {
  return modal((dialog, close) => {
    const ok = button(confirmLabel, { kind: danger ? "danger" : "primary", onclick: () => close(true) });
    append(dialog, [
      h("h2", { class: "dialog-title" }, title),
      message ? h("p", { class: "dialog-text" }, message) : null,
      h("div", { class: "dialog-actions" }, button("Cancel", { onclick: () => close(false) }), ok),
    ]);
    queueMicrotask(() => ok.focus());
  }, { label: title }).then(Boolean);
}

/** Asks for one line of text; submit(value) may throw an Error whose message is shown under the field. */
export function promptDialog({ title, label, value = "", confirmLabel = "Save", submit }) {
  return modal((dialog, close) => {
    const id = `prompt-${Math.random().toString(36).slice(2)}`;
    const input = h("input", { id, class: "input", type: "text", value, required: true, autocomplete: "off",
                               "aria-describedby": `${id}-error` });
    const error = h("p", { id: `${id}-error`, class: "field-error", "aria-live": "polite" });
    const ok = button(confirmLabel, { kind: "primary", type: "submit" });
    const form = h("form", { class: "dialog-form", novalidate: true },
      h("h2", { class: "dialog-title" }, title),
      h("div", { class: "field" }, h("label", { for: id, class: "label" }, label), input, error),
      h("div", { class: "dialog-actions" }, button("Cancel", { onclick: () => close(null) }), ok));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text) {
        error.textContent = "Please enter a value.";
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      ok.disabled = true;
      try {
        const result = submit ? await submit(text) : text;
        close(result === undefined ? text : result);
      } catch (err) {
        error.textContent = err.message;
        input.setAttribute("aria-invalid", "true");
        ok.disabled = false;
        input.focus();
      }
    });
    dialog.append(form);
    queueMicrotask(() => {
      input.focus();
      input.select();
    });
  }, { label: title });
}

/** A labelled field whose hint and error line are tied to the control (aria-describedby); setError(text) marks it. */
export function formField(label, control, { hint } = {}) {
  if (!control.id) control.id = `field-${Math.random().toString(36).slice(2)}`;
  const hintEl = hint ? h("p", { id: `${control.id}-hint`, class: "field-desc" }, hint) : null;
  const errorEl = h("p", { id: `${control.id}-error`, class: "field-error", "aria-live": "polite" });
  control.setAttribute("aria-describedby", [hintEl && hintEl.id, errorEl.id].filter(Boolean).join(" "));
  const el = h("div", { class: "field" }, h("label", { class: "label", for: control.id }, label), control, hintEl, errorEl);
  return {
    el,
    control,
    setError(message) {
      errorEl.textContent = message || "";
      if (message) control.setAttribute("aria-invalid", "true");
      else control.removeAttribute("aria-invalid");
    },
  };
}

/** A server message as a sentence: "no user named 'x'" → "No user named 'x'." */
export function sentence(text) {
  const s = String(text || "").trim();
  if (!s) return s;
  return s[0].toUpperCase() + s.slice(1) + (/[.!?]$/.test(s) ? "" : ".");
}

/** Hidden text for screen readers. */
export function srOnly(text) {
  return h("span", { class: "sr-only" }, text);
}

export function emptyState(title, text, ...actions) {
  return h("div", { class: "empty" }, h("p", { class: "empty-title" }, title), text ? h("p", { class: "muted" }, text) : null,
    actions.length ? h("div", { class: "empty-actions" }, actions) : null);
}

/** Arrow-key navigation for a role=tablist (the tabs are links; Enter/click follows them). */
export function tablistKeys(list) {
  list.addEventListener("keydown", (e) => {
    const tabs = [...list.querySelectorAll("[role=tab]")];
    const i = tabs.indexOf(document.activeElement);
    if (i < 0) return;
    let next = null;
    if (e.key === "ArrowRight") next = tabs[(i + 1) % tabs.length];
    else if (e.key === "ArrowLeft") next = tabs[(i - 1 + tabs.length) % tabs.length];
    else if (e.key === "Home") next = tabs[0];
    else if (e.key === "End") next = tabs[tabs.length - 1];
    if (next) {
      e.preventDefault();
      next.focus();
    }
  });
}
