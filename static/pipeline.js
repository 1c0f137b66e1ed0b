// nfhub page: the pipeline tab — pick a pipeline from the catalog, fill in the form generated from its argument
// definitions (file pickers over the project's files, numbers, choices, switches, texts), save, run.
import { ApiError, api, friendlyError, joinPath } from "./api.js";
import { listDir } from "./files.js";
import { ACTIVE, button, confirmDialog, emptyState, h, icon, modal, replace, richText, toast } from "./ui.js";

let catalogCache = null;

async function loadCatalog() {
  if (!catalogCache) {
    catalogCache = (async () => {
      const { nextflow_projects: names } = await api("/api/nextflow-projects");
      return Promise.all(names.map(async (name) => {
        try {
          return (await api(`/api/nextflow-projects/${encodeURIComponent(name)}`)).nextflow_project;
        } catch {
          return { name, description: "" };
        }
      }));
    })();
    catalogCache.catch(() => { catalogCache = null; });
  }
  return catalogCache;
}

function same(a, b) {
  return JSON.stringify(a) === JSON.stringify(b);
}

function compilePattern(pattern) {
  if (!pattern) return null;
  try {
    return new RegExp(pattern);
  } catch {
    return null; // a Python-only construct: the server checks it
  }
}

let fieldSeq = 0;

// ---- the file and folder picker ---------------------------------------------------------------------------------

/** Pick files/folders of the project; resolves with [paths] or null. */
export function pickPaths({ projectId, files = true, folders = false, multiple = false, pattern = null, start = "",
                            title }) {
  const regex = compilePattern(pattern);
  const chosen = new Set();
  let dir = start;
  return modal((dialog, close) => {
    const what = files && folders ? "file or folder" : folders ? "folder" : "file";
    const heading = title || `Choose ${multiple ? `${what}s` : `a ${what}`}`;
    const crumbs = h("nav", { class: "breadcrumb", "aria-label": "Folder" });
    const list = h("div", { class: "picker-list", role: "group", "aria-label": "Files and folders" });
    const count = h("span", { class: "muted small", "aria-live": "polite" });
    const ok = button(multiple ? "Add selected" : "Choose", { kind: "primary", disabled: true,
      onclick: () => close([...chosen]) });
    const here = folders ? button("Choose this folder", { onclick: () => close([dir]) }) : null;
    const refresh = () => {
      ok.disabled = chosen.size === 0;
      count.textContent = multiple ? `${chosen.size} selected` : "";
      if (here) here.disabled = dir === "";
    };
    const name = `pick-${++fieldSeq}`;
    async function open(next) {
      dir = next;
      const parts = dir ? dir.split("/") : [];
      replace(crumbs, h("button", { type: "button", class: "link-btn", onclick: () => open("") }, icon("folder"), "Project files"),
        parts.map((part, i) => [h("span", { class: "sep", "aria-hidden": "true" }, "/"),
          i === parts.length - 1 ? h("span", {}, part)
            : h("button", { type: "button", class: "link-btn", onclick: () => open(parts.slice(0, i + 1).join("/")) }, part)]));
      replace(list, h("p", { class: "loading" }, "Loading…"));
      let entries;
      try {
        entries = await listDir(projectId, dir);
      } catch (err) {
        replace(list, h("p", { class: "notice notice-error" }, friendlyError(err)));
        return;
      }
      entries.sort((a, b) => (a.type === b.type ? a.name.localeCompare(b.name) : a.type === "folder" ? -1 : 1));
      const rows = entries.map((entry) => {
        const path = joinPath(dir, entry.name);
        const selectable = entry.type === "folder" ? folders : files;
        const matches = entry.type === "folder" || !regex || regex.test(path) || regex.test(entry.name);
        const id = `${name}-${path.replace(/[^A-Za-z0-9_-]/g, "_")}-${Math.random().toString(36).slice(2, 6)}`;
        const input = selectable ? h("input", { type: multiple ? "checkbox" : "radio", name, id, value: path,
          checked: chosen.has(path), disabled: !matches }) : null;
        if (input) {
          input.addEventListener("change", () => {
            if (!multiple) chosen.clear();
            if (input.checked) chosen.add(path); else chosen.delete(path);
            refresh();
          });
          input.addEventListener("dblclick", () => { if (!multiple && matches) close([path]); });
        }
        const label = entry.type === "folder"
          ? h("button", { type: "button", class: "link-btn picker-folder", onclick: () => open(path),
            "aria-label": `Open folder ${entry.name}` }, icon("folder"), entry.name)
          : h("label", { for: id, class: matches ? "" : "muted" }, icon("file"), entry.name,
            matches ? null : h("span", { class: "small" }, " (does not match the expected name)"));
        return h("div", { class: ["picker-row", matches ? null : "disabled"] },
          input || h("span", { class: "picker-spacer" }),
          entry.type === "folder" && input ? h("label", { for: id, class: "sr-only" }, `Select folder ${entry.name}`) : null,
          label);
      });
      replace(list, rows.length ? rows : h("p", { class: "muted picker-empty" }, "This folder is empty."));
      refresh();
      const first = list.querySelector("input:not([disabled]), button");
      if (first) first.focus();
    }
    dialog.append(
      h("div", { class: "dialog-head" }, h("h2", { class: "dialog-title" }, heading),
        button("Close", { kind: "ghost", iconName: "close", iconOnly: true, onclick: () => close(null) })),
      pattern ? h("p", { class: "muted small" }, "Expected name: ", h("code", {}, pattern)) : null,
      crumbs, list,
      h("div", { class: "dialog-actions" }, count, h("span", { class: "spacer" }), here,
        button("Cancel", { onclick: () => close(null) }), ok));
    open(dir);
  }, { className: "dialog-picker", label: "Choose files" });
}

// ---- form fields ------------------------------------------------------------------------------------------------

function describe(defn) {
  const bits = [];
  if (defn.description) bits.push(...richText(defn.description), " ");
  const d = defn.default;
  if (d !== null && d !== undefined && d !== "" && defn.type !== "boolean") {
    const shown = Array.isArray(d) ? d.join(", ") : String(d);
    bits.push(h("span", { class: "field-default" }, "Default: ", h("code", {}, shown)));
  }
  if (defn.type === "number" && (defn.min !== null || defn.max !== null)) {
    const range = defn.min !== null && defn.max !== null ? `${defn.min} to ${defn.max}`
      : defn.min !== null ? `at least ${defn.min}` : `at most ${defn.max}`;
    bits.push(h("span", { class: "field-default" }, ` Allowed: ${range}${defn.integer ? ", whole numbers" : ""}.`));
  }
  return bits;
}

/** Builds one field; returns {name, el, focus(), get(), setError(msg), setDisabled(bool)}. */
function makeField(name, defn, saved, tab) {
  const id = `arg-${name}-${++fieldSeq}`;
  const descId = `${id}-desc`;
  const errId = `${id}-error`;
  const helpId = `${id}-help`;
  const hasSaved = saved !== undefined && saved !== null;
  const initial = hasSaved ? saved : defn.default;
  let control; // the element that gets focus and aria attributes
  let body; // what goes under the label
  let get;
  const describedBy = `${descId} ${errId}`;
  const onChange = () => tab.markDirty();

  switch (defn.type) {
    case "number": {
      control = h("input", { id, class: "input input-number", type: "number", inputmode: defn.integer ? "numeric" : "decimal",
        step: defn.integer ? "1" : "any", min: defn.min ?? null, max: defn.max ?? null,
        value: hasSaved ? String(saved) : "", placeholder: defn.default ?? "" });
      body = control;
      get = () => {
        if (control.validity.badInput) return { error: "Enter a number." };
        return control.value === "" ? undefined : Number(control.value);
      };
      break;
    }
    case "boolean": {
      control = h("input", { id, type: "checkbox", class: "switch", checked: Boolean(initial), role: "switch" });
      body = null; // the checkbox sits in the label row
      get = () => control.checked;
      break;
    }
    case "value-select": {
      const options = defn.options || [];
      if (defn.multiple) {
        const chosen = Array.isArray(initial) ? initial : [];
        const boxes = options.map((o, i) => {
          const box = h("input", { type: "checkbox", id: `${id}-${i}`, checked: chosen.some((c) => same(c, o.value)) });
          box.addEventListener("change", onChange);
          return { box, option: o };
        });
        control = boxes.length ? boxes[0].box : h("span");
        body = h("div", { class: "choice-group", role: "group", "aria-labelledby": `${id}-label` },
          boxes.map(({ box, option }) => h("label", { class: "choice", for: box.id }, box, option.label)));
        get = () => {
          const values = boxes.filter((b) => b.box.checked).map((b) => b.option.value);
          return values.length ? values : undefined;
        };
      } else {
        control = h("select", { id, class: "input select" });
        const none = initial === null || initial === undefined;
        if (none || !defn.required) control.append(h("option", { value: "" }, none ? "Choose…" : "(default)"));
        options.forEach((o, i) => control.append(h("option", { value: String(i), selected: !none && same(o.value, initial) },
          o.label === String(o.value) ? o.label : `${o.label}`)));
        if (!none && !options.some((o) => same(o.value, initial)) && hasSaved) {
          control.append(h("option", { value: "saved", selected: true }, `${saved} (no longer an option)`));
        }
        body = control;
        get = () => {
          if (control.value === "") return undefined;
          if (control.value === "saved") return saved;
          return options[Number(control.value)].value;
        };
      }
      break;
    }
    case "text": {
      const props = { id, class: "input", value: hasSaved ? saved : "", placeholder: defn.default ?? "",
        maxlength: defn.max_length ?? null, spellcheck: "false", autocomplete: "off" };
      control = defn.multiline ? h("textarea", { ...props, rows: 4, class: "input textarea" }) : h("input", { ...props, type: "text" });
      if (defn.multiline) control.value = hasSaved ? saved : "";
      body = control;
      get = () => (control.value.trim() === "" ? undefined : control.value);
      break;
    }
    case "paths": {
      let items = Array.isArray(saved) ? [...saved] : [];
      const list = h("ul", { class: "path-list", "aria-label": `Chosen ${defn.label || name}` });
      const render = () => {
        replace(list, items.length ? items.map((path, i) => h("li", { class: "path-chip" }, icon("file"),
          h("span", { class: "mono" }, path),
          button(`Remove ${path}`, { kind: "ghost", iconName: "close", iconOnly: true, size: "sm",
            onclick: () => { items.splice(i, 1); render(); onChange(); } })))
          : h("li", { class: "muted path-empty" }, "Nothing chosen yet."));
      };
      render();
      control = button(defn.selectable_folders && !defn.selectable_files ? "Add folders…" : "Add files…",
        { iconName: "plus", id, onclick: async () => {
          const picked = await pickPaths({ projectId: tab.view.id, files: defn.selectable_files !== false,
            folders: Boolean(defn.selectable_folders), multiple: true, pattern: defn.pattern });
          if (picked && picked.length) {
            items = [...new Set([...items, ...picked])];
            render();
            onChange();
          }
        } });
      body = h("div", { class: "paths-field", role: "group", "aria-labelledby": `${id}-label` }, list, control);
      get = () => (items.length ? [...items] : undefined);
      break;
    }
    default: { // path, file-glob
      const glob = defn.type === "file-glob";
      control = h("input", { id, class: "input mono", type: "text", value: hasSaved ? saved : "", autocomplete: "off",
        spellcheck: "false", placeholder: defn.default ?? (glob ? "folder/*.fastq.gz" : "path/in/project") });
      const browse = button("Browse…", { iconName: "folder", "aria-label": `Browse for ${defn.label || name}`,
        onclick: async () => {
          const current = control.value.trim();
          const start = current.includes("/") ? current.split("/").slice(0, -1).join("/") : "";
          const picked = await pickPaths({ projectId: tab.view.id, files: glob ? false : defn.selectable_files !== false,
            folders: glob ? true : Boolean(defn.selectable_folders), pattern: glob ? null : defn.pattern, start });
          if (picked && picked.length) {
            control.value = glob ? joinPath(picked[0], current.split("/").pop() || "*") : picked[0];
            onChange();
            control.focus();
          }
        } });
      body = h("div", { class: "input-group" }, control, browse);
      get = () => (control.value.trim() === "" ? undefined : control.value.trim());
    }
  }
  control.setAttribute("aria-describedby", describedBy);
  if (defn.required) control.setAttribute("aria-required", "true");
  control.addEventListener("input", onChange);
  control.addEventListener("change", onChange);

  const help = defn.help ? h("div", { id: helpId, class: "field-help", hidden: true }, richText(defn.help)) : null;
  const helpBtn = help ? h("button", { type: "button", class: "help-btn", "aria-expanded": "false", "aria-controls": helpId,
    "aria-label": `Help for ${defn.label || name}`, title: "Show help" }, icon("help")) : null;
  if (helpBtn) {
    helpBtn.addEventListener("click", () => {
      const open = help.hidden;
      help.hidden = !open;
      helpBtn.setAttribute("aria-expanded", String(open));
    });
  }
  const labelText = [defn.label || name,
    defn.required ? h("span", { class: "required", "aria-hidden": "true", title: "required" }, " *") : null,
    defn.required ? h("span", { class: "sr-only" }, " (required)") : null];
  const paramName = defn.label && defn.label !== name ? h("code", { class: "param-name" }, `--${name}`) : null;
  const error = h("p", { id: errId, class: "field-error" });
  const labelRow = defn.type === "boolean"
    ? h("div", { class: "label-row" }, control, h("label", { for: id, id: `${id}-label`, class: "label" }, labelText), paramName, helpBtn)
    : h("div", { class: "label-row" },
      (defn.type === "value-select" && defn.multiple) || defn.type === "paths"
        ? h("span", { id: `${id}-label`, class: "label" }, labelText)
        : h("label", { for: id, id: `${id}-label`, class: "label" }, labelText),
      paramName, helpBtn);
  const el = h("div", { class: ["field", `field-${defn.type}`], dataset: { arg: name } },
    labelRow, body, error, help, h("p", { id: descId, class: "field-desc" }, describe(defn)));
  return {
    name, defn, el, get,
    focus() {
      control.focus();
      if (el.scrollIntoView) el.scrollIntoView({ block: "center" });
    },
    setError(message) {
      error.textContent = message || "";
      el.classList.toggle("has-error", Boolean(message));
      if (message) control.setAttribute("aria-invalid", "true"); else control.removeAttribute("aria-invalid");
    },
  };
}

// ---- the tab ----------------------------------------------------------------------------------------------------

export class PipelineTab {
  constructor(view, panel) {
    this.view = view;
    this.panel = panel;
    this.fields = [];
    this.savedValues = null;
    this.loaded = false;
    this.onRun = () => this.lockIfRunning();
    view.live.addEventListener("run", this.onRun);
    view.live.addEventListener("snapshot", this.onRun);
    view.live.addEventListener("scheduled", this.onRun);
  }

  dispose() {
    this.view.live.removeEventListener("run", this.onRun);
    this.view.live.removeEventListener("snapshot", this.onRun);
    this.view.live.removeEventListener("scheduled", this.onRun);
  }

  update() {
    if (!this.loaded) {
      this.loaded = true;
      this.load();
    } else {
      const errors = this.view.takeErrors();
      if (errors) this.showErrors(errors);
    }
  }

  async load() {
    replace(this.panel, h("div", { class: "loading" }, "Loading pipelines…"));
    let catalog;
    try {
      catalog = await loadCatalog();
    } catch (err) {
      replace(this.panel, h("p", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
      return;
    }
    this.catalog = catalog;
    this.pickerBox = h("section", { class: "card card-pad", "aria-labelledby": "pipeline-heading" });
    this.formBox = h("div");
    replace(this.panel, h("div", { class: "pipeline-layout" }, this.pickerBox, this.formBox));
    this.renderPicker();
    await this.renderForm();
  }

  renderPicker() {
    const current = this.view.project.nextflow_project;
    const write = this.view.canWrite;
    if (!this.catalog.length) {
      replace(this.pickerBox, h("h2", { id: "pipeline-heading", class: "h3" }, "Pipeline"),
        emptyState("No pipelines available", "The administrator has not listed any pipelines in the catalog yet."));
      return;
    }
    const radios = this.catalog.map((p) => {
      const id = `pipeline-${p.name}`;
      const input = h("input", { type: "radio", name: "pipeline", id, value: p.name, checked: p.name === current,
        disabled: !write });
      input.addEventListener("change", () => this.choose(p.name));
      return h("label", { class: ["pipeline-option", p.name === current ? "selected" : null], for: id }, input,
        h("span", { class: "pipeline-option-text" },
          h("span", { class: "pipeline-name" }, p.name),
          p.description ? h("span", { class: "pipeline-desc" }, p.description) : null,
          h("span", { class: "pipeline-source muted small", title: p.source || "" },
            p.local ? "local pipeline" : [p.source, p.revision ? `@ ${p.revision}` : null].filter(Boolean).join(" "))));
    });
    replace(this.pickerBox,
      h("fieldset", { class: "pipeline-fieldset" },
        h("legend", { id: "pipeline-heading", class: "h3" }, "Pipeline"),
        h("p", { class: "muted small" }, current ? "The pipeline this project runs." : "Choose the pipeline this project runs."),
        h("div", { class: "pipeline-options" }, radios)));
  }

  async choose(name) {
    const previous = this.view.project.nextflow_project;
    const args = this.view.project.workflow_arguments || {};
    if (previous && Object.keys(args).length) {
      const ok = await confirmDialog({ title: `Switch to ${name}?`,
        message: `The settings you made for ${previous} are cleared.`, confirmLabel: `Switch to ${name}` });
      if (!ok) {
        this.renderPicker();
        return;
      }
    }
    try {
      await api(`/api/projects/${this.view.id}/update`, { method: "POST", json: { nextflow_project: name } });
    } catch (err) {
      toast(err.status === 409 ? "A run is in progress: change the pipeline when it has finished." : friendlyError(err), "error");
      this.renderPicker();
      return;
    }
    Object.assign(this.view.project, { nextflow_project: name, workflow_arguments: {} });
    this.view.updateRunbar();
    toast(`This project now runs ${name}.`, "success");
    this.renderPicker();
    await this.renderForm();
    const first = this.formBox.querySelector("input, select, textarea, button");
    if (first) first.focus();
  }

  async renderForm() {
    const name = this.view.project.nextflow_project;
    this.fields = [];
    if (!name) {
      replace(this.formBox);
      return;
    }
    replace(this.formBox, h("div", { class: "loading" }, "Loading the pipeline's settings…"));
    let definitions;
    try {
      ({ arguments: definitions } = await api(`/api/nextflow-projects/${encodeURIComponent(name)}/arguments`));
    } catch (err) {
      replace(this.formBox, h("p", { class: "notice notice-error", role: "alert" }, err.status === 404
        ? `The pipeline “${name}” is no longer in the catalog. Choose another one.` : friendlyError(err)));
      return;
    }
    const saved = this.view.project.workflow_arguments || {};
    this.summary = h("div", { class: "error-summary", role: "alert", tabindex: "-1", hidden: true });
    this.lockNote = h("p", { class: "notice notice-info", hidden: true },
      "A run is in progress: the settings are locked until it has finished.");
    const groups = [];
    let group = null;
    const newGroup = (title, description) => {
      group = h("fieldset", { class: "form-group" },
        title ? h("legend", { class: "form-group-title" }, title) : null,
        description ? h("p", { class: "muted small form-group-desc" }, richText(description)) : null);
      groups.push(group);
    };
    for (const [argName, defn] of Object.entries(definitions)) {
      if (defn.type === "separator") {
        newGroup(defn.label || argName, defn.description);
        continue;
      }
      if (!group) newGroup(null, null);
      const field = makeField(argName, defn, saved[argName], this);
      this.fields.push(field);
      group.append(field.el);
    }
    this.statusText = h("span", { class: "save-status muted", "aria-live": "polite" });
    this.saveBtn = button("Save settings", { type: "submit" });
    this.saveRunBtn = button("Save and run", { kind: "primary", iconName: "play", onclick: () => this.saveAndRun() });
    this.fieldset = h("fieldset", { class: "form-fields", disabled: !this.view.canWrite }, groups.length ? groups
      : h("p", { class: "muted" }, "This pipeline has no settings."));
    this.form = h("form", { class: "args-form card", novalidate: true, "aria-labelledby": "settings-heading" },
      h("div", { class: "card-head" }, h("h2", { id: "settings-heading", class: "h3" }, `Settings for ${name}`),
        h("p", { class: "muted small" }, h("span", { class: "required", "aria-hidden": "true" }, "*"), " marks required settings. ",
          "Paths are inside this project's folder.")),
      this.summary, this.lockNote, this.fieldset,
      h("div", { class: "form-actions" }, this.statusText, h("span", { class: "spacer" }),
        this.view.canWrite ? [this.saveBtn, this.saveRunBtn] : h("span", { class: "muted" }, "You have read access to this project.")));
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.save();
    });
    replace(this.formBox, this.form);
    this.savedValues = this.collect(true).values;
    this.markDirty();
    this.lockIfRunning();
    const errors = this.view.takeErrors();
    if (errors) this.showErrors(errors);
  }

  lockIfRunning() {
    if (!this.form) return;
    const active = ACTIVE.has(this.view.project.status);
    this.lockNote.hidden = !active;
    this.fieldset.disabled = active || !this.view.canWrite;
    this.saveBtn.disabled = this.saveRunBtn.disabled = active;
  }

  /** {values, errors}: values equal to their default are left out, so the pipeline's default applies. */
  collect(quiet = false) {
    const values = {};
    const errors = {};
    for (const field of this.fields) {
      const value = field.get();
      if (value && typeof value === "object" && !Array.isArray(value) && value.error) {
        errors[field.name] = value.error;
        continue;
      }
      if (value === undefined || same(value, field.defn.default)) continue;
      values[field.name] = value;
    }
    if (!quiet) return { values, errors };
    return { values };
  }

  dirty() {
    return this.form && !same(this.collect(true).values, this.savedValues);
  }

  markDirty() {
    if (!this.statusText) return;
    const dirty = this.dirty();
    this.statusText.textContent = dirty ? "Unsaved changes" : "All changes saved";
    this.statusText.classList.toggle("text-warn", dirty);
  }

  clearErrors() {
    for (const field of this.fields) field.setError(null);
    this.summary.hidden = true;
    replace(this.summary);
  }

  showErrors(details) {
    if (!this.form) {
      this.view.pendingErrors = details;
      return;
    }
    this.clearErrors();
    const byName = new Map(this.fields.map((f) => [f.name, f]));
    const items = [];
    for (const [name, message] of Object.entries(details || {})) {
      const field = byName.get(name);
      if (field) {
        field.setError(message);
        items.push(h("li", {}, h("button", { type: "button", class: "link-btn", onclick: () => field.focus() },
          field.defn.label || name), `: ${message}`));
      } else {
        items.push(h("li", {}, h("code", {}, name), `: ${message}`));
      }
    }
    if (!items.length) return;
    replace(this.summary, h("p", { class: "error-summary-title" }, icon("alert"),
      items.length === 1 ? "One setting needs your attention" : `${items.length} settings need your attention`),
    h("ul", {}, items));
    this.summary.hidden = false;
    this.summary.focus();
  }

  async save({ quiet = false } = {}) {
    const { values, errors } = this.collect();
    if (Object.keys(errors).length) {
      this.showErrors(errors);
      return false;
    }
    this.saveBtn.disabled = this.saveRunBtn.disabled = true;
    try {
      await api(`/api/projects/${this.view.id}/update`, { method: "POST", json: { workflow_arguments: values } });
      this.view.project.workflow_arguments = values;
      this.savedValues = values;
      this.clearErrors();
      this.markDirty();
      if (!quiet) toast("Settings saved.", "success");
      return true;
    } catch (err) {
      if (err instanceof ApiError && err.status === 422 && err.details) this.showErrors(err.details);
      else toast(err.status === 409 ? "A run is in progress: change the settings when it has finished." : friendlyError(err), "error");
      return false;
    } finally {
      this.lockIfRunning();
    }
  }

  async beforeSchedule() {
    if (!this.dirty()) return true;
    return this.save({ quiet: true });
  }

  async saveAndRun() {
    if (!(await this.save({ quiet: true }))) return;
    await this.view.schedule(false, { confirmed: true });
  }
}
