// nfhub page: one project — header, the run bar (live progress, run/resume/cancel), tabs for files, pipeline, runs.
import { ApiError, api, friendlyError, tokenUrl } from "./api.js";
import { FilesTab, Uploads } from "./files.js";
import { PipelineTab } from "./pipeline.js";
import { deleteProject, renameProject } from "./projects.js";
import { RunsTab } from "./runs.js";
import { shareDialog } from "./share.js";
import { ACTIVE, button, confirmDialog, emptyState, fmtDuration, h, progressBar, replace, runDuration, statusBadge,
  tablistKeys, toast } from "./ui.js";

const TABS = [
  { key: "files", label: "Files", Tab: FilesTab },
  { key: "pipeline", label: "Pipeline", Tab: PipelineTab },
  { key: "runs", label: "Runs", Tab: RunsTab },
];

export class ProjectView {
  constructor(main, id) {
    this.main = main;
    this.id = id;
    this.project = null;
    this.run = null; // the project's current (latest) run, brief
    this.live = new EventTarget();
    this.uploads = new Uploads(this);
    this.tab = null;
    this.tabKey = null;
    this.route = null;
    this.disposed = false;
    this.pendingErrors = null; // argument errors from a refused schedule, for the pipeline tab
    this.loaded = this.load();
  }

  get canWrite() {
    return this.project && ["owner", "write", "admin"].includes(this.project.access);
  }

  busy() {
    return this.uploads.active();
  }

  dispose() {
    this.disposed = true;
    if (this.tab) this.tab.dispose();
    this.closeEvents();
    clearTimeout(this.liveTimer);
    clearInterval(this.clock);
  }

  async load() {
    replace(this.main, h("div", { class: "loading" }, "Loading project…"));
    try {
      ({ project: this.project } = await api(`/api/projects/${this.id}`));
    } catch (err) {
      if (this.disposed) return false;
      replace(this.main, emptyState(err.status === 404 ? "Project not found" : "Could not open the project",
        err.status === 404 ? "It may have been deleted, or it is not shared with you." : friendlyError(err),
        h("a", { class: "btn btn-secondary", href: "#/" }, "Back to projects")));
      return false;
    }
    if (this.disposed) return false;
    this.render();
    this.openEvents();
    return true;
  }

  render() {
    const p = this.project;
    document.title = `${p.name} · nfhub`;
    this.titleEl = h("h1", { class: "page-title", tabindex: "-1" }, p.name);
    const access = p.access === "owner" ? null
      : h("span", { class: "badge badge-none", title: `owned by ${p.owner}` }, `${p.access} access · ${p.owner}`);
    this.renameBtn = button("Rename", { iconName: "edit", size: "sm", disabled: !this.canWrite,
      onclick: () => renameProject(this.project, (name) => this.renamed(name)) });
    // Sharing is for the owner (or an admin); people it is shared with see their access level in the badge instead.
    this.shareBtn = ["owner", "admin"].includes(p.access) ? button("Share", { iconName: "share", size: "sm",
      onclick: () => shareDialog(this.project) }) : null;
    this.deleteBtn = button("Delete", { kind: "danger-ghost", iconName: "trash", size: "sm",
      disabled: !["owner", "admin"].includes(p.access),
      onclick: () => deleteProject(this.project, () => { location.hash = "#/"; }) });

    // The run bar: always in view, whatever the tab.
    this.pipelineEl = h("span", { class: "runbar-pipeline" });
    this.statusEl = h("span", { class: "runbar-status" });
    this.bar = progressBar("Run progress");
    this.countsEl = h("span", { class: "runbar-counts" });
    this.announce = h("span", { class: "sr-only", "aria-live": "polite", "aria-atomic": "true" });
    this.runBtn = button("Run pipeline", { kind: "primary", iconName: "play", onclick: () => this.schedule(false) });
    this.resumeBtn = button("Resume", { iconName: "resume", onclick: () => this.schedule(true),
      title: "Run again, reusing the results of tasks that already completed (Nextflow -resume)" });
    this.cancelBtn = button("Cancel run", { kind: "danger", iconName: "stop", onclick: () => this.cancel() });
    this.viewRunLink = h("a", { class: "btn btn-ghost btn-sm runbar-view" }, "View run");
    const runbar = h("section", { class: "runbar card", "aria-label": "Current run" },
      h("div", { class: "runbar-info" }, this.pipelineEl, this.statusEl),
      h("div", { class: "runbar-progress" }, this.bar.el, h("div", { class: "runbar-meta" }, this.countsEl, this.viewRunLink),
        this.announce),
      h("div", { class: "runbar-actions" }, this.runBtn, this.resumeBtn, this.cancelBtn));

    this.tabLinks = {};
    const tablist = h("div", { class: "tabs", role: "tablist", "aria-label": "Project sections" },
      TABS.map((t) => {
        const link = h("a", { role: "tab", id: `tab-${t.key}`, class: "tab", href: this.tabHref(t.key),
                              "aria-controls": "tabpanel" }, t.label);
        this.tabLinks[t.key] = link;
        return link;
      }));
    tablistKeys(tablist);
    this.panel = h("section", { id: "tabpanel", class: "tabpanel", role: "tabpanel" });

    replace(this.main,
      h("nav", { class: "breadcrumb", "aria-label": "Breadcrumb" }, h("a", { href: "#/" }, "Projects"),
        h("span", { class: "sep", "aria-hidden": "true" }, "/"), h("span", { "aria-current": "page" }, p.name)),
      h("div", { class: "page-head" }, h("div", { class: "page-head-title" }, this.titleEl, access),
        h("div", { class: "page-actions" }, this.shareBtn, this.renameBtn, this.deleteBtn)),
      runbar, tablist, this.panel);
    this.updateRunbar();
  }

  tabHref(key) {
    if (key === "files" && this.route && this.route.dir) {
      return `#/p/${this.id}/files/${this.route.dir.split("/").map(encodeURIComponent).join("/")}`;
    }
    return `#/p/${this.id}/${key}`;
  }

  renamed(name) {
    this.project.name = name;
    this.titleEl.textContent = name;
    this.main.querySelector(".breadcrumb [aria-current]").textContent = name;
    document.title = `${name} · nfhub`;
  }

  async show(route) {
    if (!(await this.loaded) || this.disposed) return;
    const previous = this.route;
    this.route = route;
    for (const t of TABS) {
      const selected = t.key === route.tab;
      this.tabLinks[t.key].setAttribute("aria-selected", String(selected));
      this.tabLinks[t.key].tabIndex = selected ? 0 : -1;
      if (t.key !== "files") this.tabLinks[t.key].href = this.tabHref(t.key);
    }
    if (route.tab === "files") this.tabLinks.files.href = this.tabHref("files");
    this.panel.setAttribute("aria-labelledby", `tab-${route.tab}`);
    if (this.tabKey === route.tab && this.tab) {
      this.tab.update(route);
    } else {
      if (this.tab) this.tab.dispose();
      const { Tab } = TABS.find((t) => t.key === route.tab);
      this.tabKey = route.tab;
      this.tab = new Tab(this, this.panel);
      this.tab.update(route);
    }
    if (previous && previous.tab !== route.tab && document.activeElement === document.body) {
      this.tabLinks[route.tab].focus();
    }
  }

  // ---- live state (server-sent events) --------------------------------------------------------------------------

  openEvents() {
    this.closeEvents();
    const source = new EventSource(tokenUrl(`/api/projects/${this.id}/events`));
    this.events = source;
    source.addEventListener("snapshot", (e) => {
      const data = JSON.parse(e.data);
      if (data.project) Object.assign(this.project, data.project);
      if (data.run) this.run = data.run;
      this.changed("snapshot", data);
    });
    source.addEventListener("run", (e) => this.applyRun(JSON.parse(e.data)));
    source.addEventListener("task", (e) => this.changed("task", JSON.parse(e.data)));
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED || this.disposed) return;
      // The browser gave up (the token expired, or the server said no): check the session, then start over.
      clearTimeout(this.liveTimer);
      this.liveTimer = setTimeout(async () => {
        try {
          ({ project: this.project } = await api(`/api/projects/${this.id}`));
          this.changed("snapshot", { project: this.project, run: this.run });
        } catch (err) {
          if (err instanceof ApiError && (err.status === 401 || err.status === 404)) return;
        }
        if (!this.disposed) this.openEvents();
      }, 3000);
    });
  }

  /** A run changed (from the event stream, or a poll when events are late). */
  applyRun(run) {
    if (!this.project.run_id || run.id >= this.project.run_id) {
      this.run = run;
      Object.assign(this.project, { run_id: run.id, status: run.status, is_scheduled: ACTIVE.has(run.status),
        submitted_processes: run.submitted_processes, completed_processes: run.completed_processes });
    }
    this.changed("run", run);
  }

  closeEvents() {
    if (this.events) this.events.close();
    this.events = null;
  }

  changed(kind, data) {
    if (kind !== "task") this.updateRunbar();
    this.live.dispatchEvent(new CustomEvent(kind, { detail: data }));
  }

  updateRunbar() {
    const p = this.project;
    const active = ACTIVE.has(p.status);
    replace(this.pipelineEl, p.nextflow_project
      ? [h("span", { class: "muted" }, "Pipeline "), h("a", { href: `#/p/${this.id}/pipeline` }, p.nextflow_project)]
      : h("a", { href: `#/p/${this.id}/pipeline` }, "Choose a pipeline"));
    replace(this.statusEl, statusBadge(p.status), p.run_id ? h("span", { class: "muted" }, ` Run #${p.run_id}`) : null);
    this.bar.set(p.status, p.submitted_processes, p.completed_processes);
    let counts = "No run yet";
    if (p.status) {
      counts = p.submitted_processes ? `${p.completed_processes} of ${p.submitted_processes} tasks done`
        : active ? "Waiting for the first tasks…" : "No tasks ran";
    }
    this.counts = counts;
    this.tickRunbar();
    // Said once per change of state or count (never per clock tick), so a screen reader is not flooded.
    const said = p.status ? `Run ${p.run_id}: ${p.status}. ${counts}.` : "";
    if (this.announce.textContent !== said) this.announce.textContent = said;
    clearInterval(this.clock);
    if (active) this.clock = setInterval(() => this.tickRunbar(), 1000);
    this.viewRunLink.hidden = !p.run_id;
    if (p.run_id) this.viewRunLink.href = `#/p/${this.id}/runs/${p.run_id}`;
    this.runBtn.hidden = active;
    this.resumeBtn.hidden = active || !p.run_id;
    this.cancelBtn.hidden = !active;
    this.runBtn.disabled = !this.canWrite || !p.nextflow_project;
    this.runBtn.title = p.nextflow_project ? "" : "Choose a pipeline first";
    this.resumeBtn.disabled = !this.canWrite;
    this.cancelBtn.disabled = !this.canWrite || this.cancelling;
  }

  tickRunbar() {
    const p = this.project;
    const elapsed = this.run && this.run.id === p.run_id ? runDuration(this.run) : null;
    this.countsEl.textContent = elapsed === null || elapsed === undefined ? this.counts
      : `${this.counts} · ${fmtDuration(elapsed)}`;
  }

  // ---- run control ------------------------------------------------------------------------------------------------

  async schedule(resume, { confirmed = false } = {}) {
    if (this.tab && this.tab.beforeSchedule && !confirmed) {
      const ok = await this.tab.beforeSchedule();
      if (!ok) return;
    }
    this.runBtn.disabled = this.resumeBtn.disabled = true;
    try {
      const answer = await api(`/api/projects/${this.id}/schedule`, { method: "POST",
        json: resume === false ? {} : { resume } });
      Object.assign(this.project, { status: "queued", run_id: answer.run_id, is_scheduled: true,
        submitted_processes: 0, completed_processes: 0 });
      this.run = null;
      this.changed("scheduled", answer);
      toast(resume === false ? `Run #${answer.run_id} is queued.` : `Run #${answer.run_id} is queued; it resumes where the earlier run left off.`, "success");
      location.hash = `#/p/${this.id}/runs/${answer.run_id}`;
    } catch (err) {
      this.scheduleRefused(err);
    } finally {
      this.updateRunbar();
    }
  }

  scheduleRefused(err) {
    if (err instanceof ApiError && err.status === 422 && err.details) {
      if (err.details.nextflow_project) {
        toast("Choose a pipeline first.", "error");
        location.hash = `#/p/${this.id}/pipeline`;
        return;
      }
      if (err.details.resume) {
        toast("There is no earlier run to resume: start a new run instead.", "error");
        return;
      }
      this.pendingErrors = err.details;
      const count = Object.keys(err.details).length;
      toast(`The run was not started: ${count === 1 ? "one setting needs" : `${count} settings need`} your attention.`,
        "error");
      if (this.tabKey === "pipeline" && this.tab) this.tab.showErrors(this.takeErrors());
      else location.hash = `#/p/${this.id}/pipeline`;
      return;
    }
    if (err instanceof ApiError && err.status === 409) {
      toast("This project already has a run in progress.", "error");
      return;
    }
    toast(friendlyError(err), "error");
  }

  takeErrors() {
    const errors = this.pendingErrors;
    this.pendingErrors = null;
    return errors;
  }

  async cancel() {
    const ok = await confirmDialog({
      title: `Cancel run #${this.project.run_id}?`,
      message: "Nextflow is asked to stop: running tasks are killed. Completed tasks stay cached, so you can resume later.",
      confirmLabel: "Cancel run", danger: true,
    });
    if (!ok) return;
    this.cancelling = true;
    this.cancelBtn.querySelector("span").textContent = "Cancelling…";
    this.updateRunbar();
    try {
      await api(`/api/projects/${this.id}/cancel`, { method: "POST" });
      toast(`Run #${this.project.run_id} was cancelled.`, "info");
    } catch (err) {
      toast(friendlyError(err), "error");
    } finally {
      this.cancelling = false;
      this.cancelBtn.querySelector("span").textContent = "Cancel run";
      try {
        ({ project: this.project } = await api(`/api/projects/${this.id}`));
      } catch {
        /* the event stream brings the state anyway */
      }
      this.changed("snapshot", { project: this.project, run: this.run });
    }
  }
}
