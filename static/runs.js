// nfhub page: the runs tab — run history, and one run in detail: live progress, the error of a failed run, the task
// table (failed first), the console log tailing live, command and parameters.
import { api, friendlyError, tokenUrl } from "./api.js";
import { dirHref } from "./files.js";
import { ACTIVE, button, confirmDialog, emptyState, fmtBytes, fmtDuration, fmtPercent, h, icon, progressBar, replace,
  runDuration, statusBadge, timeEl, toast } from "./ui.js";

const TASK_FILTERS = [["", "All tasks"], ["FAILED", "Failed"], ["RUNNING", "Running"], ["SUBMITTED", "Submitted"],
  ["COMPLETED", "Completed"], ["CACHED", "Cached"], ["ABORTED", "Aborted"]];
const TASK_PAGE = 100;
const LOG_KEEP = 2 * 1024 * 1024; // characters of log kept on screen

function runHref(projectId, runId) {
  return `#/p/${projectId}/runs/${runId}`;
}

function taskCounts(run) {
  const parts = [];
  if (run.submitted_processes) parts.push(`${run.completed_processes} of ${run.submitted_processes} tasks`);
  if (run.failed_processes) parts.push(`${run.failed_processes} failed`);
  if (run.cached_processes) parts.push(`${run.cached_processes} cached`);
  return parts.join(" · ") || (ACTIVE.has(run.status) ? "Waiting for the first tasks…" : "No tasks");
}

/** The project folder's path inside an absolute path of a run's params ('/…/projects/<id>/results' → 'results'). */
function projectRelative(projectId, absolute) {
  if (typeof absolute !== "string") return null;
  const marker = `/projects/${projectId}/`;
  const at = absolute.lastIndexOf(marker);
  return at < 0 ? null : absolute.slice(at + marker.length).replace(/\/+$/, "");
}

export class RunsTab {
  constructor(view, panel) {
    this.view = view;
    this.panel = panel;
    this.runs = null;
    this.rows = new Map();
    this.detail = null;
    this.historyBox = h("section", { class: "card", "aria-labelledby": "history-heading" });
    this.detailBox = h("div", { class: "run-detail-wrap" });
    replace(panel, this.historyBox, this.detailBox);
    this.onRun = (e) => this.runEvent(e.detail);
    this.onTask = (e) => { if (this.detail) this.detail.taskEvent(e.detail); };
    this.onScheduled = () => this.loadHistory();
    view.live.addEventListener("run", this.onRun);
    view.live.addEventListener("task", this.onTask);
    view.live.addEventListener("scheduled", this.onScheduled);
    this.historyLoaded = this.loadHistory();
    // Durations of active runs tick while they run.
    this.ticker = setInterval(() => {
      for (const run of this.runs || []) {
        if (ACTIVE.has(run.status)) this.rows.get(run.id)?.tick(run);
      }
      if (this.detail) this.detail.tick();
    }, 1000);
  }

  dispose() {
    clearInterval(this.ticker);
    this.view.live.removeEventListener("run", this.onRun);
    this.view.live.removeEventListener("task", this.onTask);
    this.view.live.removeEventListener("scheduled", this.onScheduled);
    if (this.detail) this.detail.dispose();
  }

  async update(route) {
    await this.historyLoaded;
    const runId = route.runId || (this.runs && this.runs.length ? this.runs[0].id : null);
    if (this.detail && this.detail.runId === runId) return;
    if (this.detail) this.detail.dispose();
    this.detail = null;
    this.selected = runId;
    this.markSelected();
    if (!runId) {
      replace(this.detailBox);
      return;
    }
    this.detail = new RunDetail(this.view, this.detailBox, runId);
  }

  async loadHistory() {
    try {
      ({ runs: this.runs } = await api(`/api/projects/${this.view.id}/runs`));
    } catch (err) {
      replace(this.historyBox, h("p", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
      this.runs = [];
      return;
    }
    this.renderHistory();
  }

  renderHistory() {
    const pid = this.view.id;
    this.rows.clear();
    if (!this.runs.length) {
      replace(this.historyBox, h("h2", { id: "history-heading", class: "sr-only" }, "Run history"),
        emptyState("No runs yet", this.view.project.nextflow_project
          ? "Check the pipeline's settings, then press “Run pipeline”."
          : "Choose a pipeline and fill in its settings first.",
        h("a", { class: "btn btn-secondary", href: `#/p/${pid}/pipeline` }, "Go to the pipeline settings")));
      return;
    }
    const tbody = h("tbody");
    for (const run of this.runs) {
      const row = this.historyRow(run);
      this.rows.set(run.id, row);
      tbody.append(row.el);
    }
    replace(this.historyBox,
      h("div", { class: "card-head" }, h("h2", { id: "history-heading", class: "h3" }, "Run history"),
        h("span", { class: "muted small" }, this.runs.length === 1 ? "1 run" : `${this.runs.length} runs`)),
      h("div", { class: "table-scroll history-scroll" }, h("table", { class: "table table-runs" },
        h("caption", { class: "sr-only" }, "Runs of this project, newest first"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Run"), h("th", { scope: "col" }, "Status"),
          h("th", { scope: "col", class: "col-md" }, "Started"), h("th", { scope: "col" }, "Duration"),
          h("th", { scope: "col", class: "col-md" }, "Tasks"), h("th", { scope: "col" }, "Exit"),
          h("th", { scope: "col", class: "col-lg" }, "By"))),
        tbody)));
    this.markSelected();
  }

  historyRow(initial) {
    const pid = this.view.id;
    const cells = { status: h("td"), started: h("td", { class: "col-md" }), duration: h("td", { class: "num" }),
      tasks: h("td", { class: "col-md" }), exit: h("td", { class: "num" }), user: h("td", { class: "col-lg" }) };
    const link = h("a", { href: runHref(pid, initial.id) }, `#${initial.id}`);
    const el = h("tr", { dataset: { runId: initial.id } }, h("th", { scope: "row" }, link,
      initial.resume_of ? h("span", { class: "muted small" }, ` resumed #${initial.resume_of}`) : null),
    cells.status, cells.started, cells.duration, cells.tasks, cells.exit, cells.user);
    const update = (run) => {
      replace(cells.status, statusBadge(run.status));
      replace(cells.started, timeEl(run.started_at || run.created_at));
      cells.duration.textContent = fmtDuration(runDuration(run));
      cells.tasks.textContent = taskCounts(run);
      cells.exit.textContent = run.exit_code ?? "—";
      cells.user.textContent = run.user || "—";
    };
    update(initial);
    el.addEventListener("click", (e) => {
      if (e.target.closest("a")) return;
      location.hash = runHref(pid, initial.id);
    });
    const tick = (run) => { cells.duration.textContent = fmtDuration(runDuration(run)); };
    return { el, link, update, tick };
  }

  markSelected() {
    for (const [id, row] of this.rows) {
      const on = id === this.selected;
      row.el.classList.toggle("selected", on);
      if (on) row.link.setAttribute("aria-current", "true"); else row.link.removeAttribute("aria-current");
    }
  }

  runEvent(run) {
    if (!this.runs) return;
    const known = this.runs.find((r) => r.id === run.id);
    if (!known) {
      this.loadHistory();
    } else {
      // Live records are brief: keep what they leave out (e.g. who started the run).
      Object.assign(known, Object.fromEntries(Object.entries(run).filter(([, v]) => v !== null && v !== undefined)),
        { exit_code: run.exit_code, error_message: run.error_message, finished_at: run.finished_at });
      const row = this.rows.get(run.id);
      if (row) row.update(known);
    }
    if (this.detail && this.detail.runId === run.id) this.detail.runEvent(run);
  }
}

class RunDetail {
  constructor(view, box, runId) {
    this.view = view;
    this.box = box;
    this.runId = runId;
    this.run = null;
    this.tasks = new Map();
    this.taskFilter = "";
    this.taskOffset = 0;
    this.taskTotal = 0;
    this.logOffset = 0;
    this.logChars = 0;
    this.decoder = new TextDecoder();
    this.lastRunEvent = Date.now();
    this.disposed = false;
    replace(box, h("div", { class: "loading" }, `Loading run #${runId}…`));
    this.load();
  }

  dispose() {
    this.disposed = true;
    clearTimeout(this.logTimer);
    clearTimeout(this.refreshTimer);
  }

  get active() {
    return this.run && ACTIVE.has(this.run.status);
  }

  async load() {
    try {
      ({ run: this.run } = await api(`/api/projects/${this.view.id}/runs/${this.runId}`));
    } catch (err) {
      if (!this.disposed) {
        replace(this.box, err.status === 404 ? emptyState(`Run #${this.runId} not found`, null)
          : h("p", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
      }
      return;
    }
    if (this.disposed) return;
    this.render();
    this.loadTasks(true);
    this.tail();
  }

  render() {
    this.summary = h("div", { class: "run-summary" });
    this.errorBox = h("div", { class: "run-error-wrap" });
    this.bar = progressBar(`Progress of run #${this.runId}`);
    this.counts = h("p", { class: "run-counts" });
    this.meta = h("dl", { class: "meta-grid" });
    this.actions = h("div", { class: "run-actions" });

    // tasks
    this.taskSelect = h("select", { id: "task-filter", class: "input select input-sm" },
      TASK_FILTERS.map(([value, label]) => h("option", { value }, label)));
    this.taskSelect.addEventListener("change", () => {
      this.taskFilter = this.taskSelect.value;
      this.loadTasks(true);
    });
    this.taskTitle = h("h3", { id: "tasks-heading", class: "h3" }, "Tasks");
    this.taskBody = h("tbody");
    this.taskMore = h("div", { class: "table-more" });
    this.taskTable = h("div", { class: "table-scroll" }, h("table", { class: "table table-tasks table-compact" },
      h("caption", { class: "sr-only" }, "Tasks of this run, failed tasks first"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Status"), h("th", { scope: "col" }, "Name"),
        h("th", { scope: "col", class: "num" }, "Duration"), h("th", { scope: "col", class: "num col-md" }, "CPU"),
        h("th", { scope: "col", class: "num col-md" }, "Memory"), h("th", { scope: "col", class: "num" }, "Exit"))),
      this.taskBody));

    // log
    this.follow = h("input", { type: "checkbox", id: "log-follow", checked: true });
    this.logPre = h("pre", { class: "log", tabindex: "0", "aria-label": "Console log", "aria-busy": "false" });
    this.logNote = h("p", { class: "muted small", hidden: true });
    const rawLog = h("a", { class: "btn btn-ghost btn-sm", href: `/api/projects/${this.view.id}/runs/${this.runId}/log`,
      target: "_blank", rel: "noopener noreferrer" }, "Open full log");
    rawLog.addEventListener("click", () => {
      rawLog.href = tokenUrl(`/api/projects/${this.view.id}/runs/${this.runId}/log`);
      setTimeout(() => { rawLog.href = `/api/projects/${this.view.id}/runs/${this.runId}/log`; }, 0);
    });
    this.command = h("div");

    replace(this.box,
      h("section", { class: "card run-detail", "aria-labelledby": "run-heading" },
        this.summary, this.errorBox,
        h("div", { class: "run-progress" }, this.bar.el, this.counts),
        this.meta, this.actions),
      h("section", { class: "card", "aria-labelledby": "tasks-heading" },
        h("div", { class: "card-head" }, this.taskTitle,
          h("div", { class: "inline-field" }, h("label", { for: "task-filter", class: "label-inline" }, "Show"), this.taskSelect)),
        this.taskTable, this.taskMore),
      h("section", { class: "card", "aria-labelledby": "log-heading" },
        h("div", { class: "card-head" }, h("h3", { id: "log-heading", class: "h3" }, "Console log"),
          h("div", { class: "log-tools" }, h("label", { class: "check-inline", for: "log-follow" }, this.follow, "Follow"), rawLog)),
        this.logNote, this.logPre),
      this.command);
    this.renderRun();
  }

  renderRun() {
    const run = this.run;
    const pid = this.view.id;
    replace(this.summary,
      h("div", { class: "run-title" }, h("h2", { id: "run-heading", class: "h2" }, `Run #${run.id}`), statusBadge(run.status),
        run.resume_of ? h("a", { class: "muted small", href: runHref(pid, run.resume_of) }, `resumed from #${run.resume_of}`) : null),
      run.run_name ? h("p", { class: "muted small mono" }, run.run_name) : null);

    if ((run.status === "failed" || run.status === "lost") || (run.error_message && run.status !== "succeeded")) {
      const title = run.status === "lost" ? "This run was lost" : run.status === "cancelled" ? "This run was cancelled"
        : "This run failed";
      const showFailed = run.failed_processes ? button("Show failed tasks", { size: "sm", onclick: () => {
        this.taskSelect.value = "FAILED";
        this.taskFilter = "FAILED";
        this.loadTasks(true);
        this.taskSelect.focus();
      } }) : null;
      replace(this.errorBox, h("div", { class: "error-box", role: "alert" },
        h("p", { class: "error-box-title" }, icon("alert"), title,
          run.exit_code !== null && run.exit_code !== undefined ? h("span", { class: "muted" }, ` (exit code ${run.exit_code})`) : null),
        run.failed_task ? h("p", {}, "Failed task: ", h("strong", {}, run.failed_task)) : null,
        run.error_message ? h("pre", { class: "error-message" }, run.error_message)
          : h("p", {}, "No error message was recorded; the console log below may tell more."),
        showFailed));
    } else {
      replace(this.errorBox);
    }

    this.bar.set(run.status, run.submitted_processes, run.completed_processes);
    this.counts.textContent = taskCounts(run);

    const stats = run.stats || {};
    const outdir = run.params ? projectRelative(pid, run.params.outdir) : null;
    const meta = [
      ["Pipeline", run.nextflow_project],
      ["Queued", timeEl(run.created_at)],
      ["Started", timeEl(run.started_at)],
      ["Finished", timeEl(run.finished_at)],
      ["Duration", this.durationEl = h("span", {}, fmtDuration(runDuration(run)))],
      ["Exit code", run.exit_code ?? "—"],
      ["Started by", run.user || "—"],
      stats.nextflow_version ? ["Nextflow", stats.nextflow_version] : null,
      run.work_dir_size !== undefined && run.work_dir_size !== null ? ["Work files", fmtBytes(run.work_dir_size)] : null,
      outdir ? ["Results", h("a", { href: dirHref(pid, outdir) }, icon("folder"), ` ${outdir}`)] : null,
    ].filter(Boolean);
    replace(this.meta, meta.map(([k, v]) => h("div", { class: "meta-item" }, h("dt", {}, k), h("dd", {}, v))));

    const write = this.view.canWrite;
    const projectActive = ACTIVE.has(this.view.project.status);
    replace(this.actions,
      this.active && write ? button("Cancel run", { kind: "danger", iconName: "stop", onclick: () => this.view.cancel() }) : null,
      !this.active && !projectActive && write && run.session_id
        ? button("Resume from this run", { iconName: "resume", onclick: () => this.view.schedule(run.id),
          title: "Start a new run that reuses this run's completed tasks" }) : null,
      !this.active && write && run.work_dir_size ? button("Clean up work files", { kind: "ghost", iconName: "trash",
        onclick: () => this.clean() }) : null);

    if (run.command || run.params) {
      replace(this.command, h("details", { class: "card disclosure" },
        h("summary", {}, "Command and parameters"),
        run.command ? [h("h4", { class: "h4" }, "Command"), h("pre", { class: "code" }, run.command.join(" "))] : null,
        run.params ? [h("h4", { class: "h4" }, "Parameters"), h("pre", { class: "code" }, JSON.stringify(run.params, null, 2))] : null));
    }
  }

  tick() {
    if (this.active && this.durationEl) this.durationEl.textContent = fmtDuration(runDuration(this.run));
  }

  async clean() {
    const ok = await confirmDialog({ title: "Clean up work files?",
      message: "Nextflow's intermediate files of this run are deleted to free space. Logs and published results are kept, but this run can no longer be resumed.",
      confirmLabel: "Clean up", danger: true });
    if (!ok) return;
    try {
      const answer = await api(`/api/projects/${this.view.id}/runs/${this.runId}/clean`, { method: "POST" });
      toast(`Freed ${fmtBytes(answer.freed_bytes)}.`, "success");
      this.run.work_dir_size = answer.work_dir_size;
      this.renderRun();
    } catch (err) {
      toast(friendlyError(err), "error");
    }
  }

  runEvent(brief) {
    this.lastRunEvent = Date.now();
    if (!this.run) return;
    const wasActive = this.active;
    Object.assign(this.run, brief, { user: brief.user || this.run.user });
    this.renderRun();
    if (wasActive && !this.active) {
      // The end: fetch the full record (stats, work size), the final task list (cached tasks come from the trace
      // file) and the rest of the log.
      clearTimeout(this.refreshTimer);
      this.refreshTimer = setTimeout(async () => {
        try {
          ({ run: this.run } = await api(`/api/projects/${this.view.id}/runs/${this.runId}`));
          this.renderRun();
        } catch { /* the brief record is shown already */ }
        this.loadTasks(true);
        this.tail();
      }, 300);
    }
  }

  // ---- tasks ------------------------------------------------------------------------------------------------------

  async loadTasks(reset) {
    if (reset) {
      this.taskOffset = 0;
      this.tasks.clear();
    }
    const filter = this.taskFilter;
    let answer;
    try {
      answer = await api(`/api/projects/${this.view.id}/runs/${this.runId}/tasks`,
        { query: { status: filter || undefined, offset: this.taskOffset, limit: TASK_PAGE } });
    } catch (err) {
      replace(this.taskMore, h("p", { class: "notice notice-error" }, friendlyError(err)));
      return;
    }
    if (this.disposed || filter !== this.taskFilter) return;
    if (reset) replace(this.taskBody);
    this.taskTotal = answer.total;
    for (const task of answer.tasks) this.taskRow(task, false);
    this.taskOffset += answer.tasks.length;
    this.renderTaskFooter();
  }

  renderTaskFooter() {
    this.taskTitle.textContent = `Tasks (${this.taskTotal})`;
    const remaining = this.taskTotal - this.tasks.size;
    replace(this.taskMore,
      !this.taskTotal ? h("p", { class: "muted table-empty" }, this.taskFilter ? "No tasks with this status."
        : this.active ? "No tasks yet: they appear here as Nextflow submits them." : "This run has no tasks.") : null,
      remaining > 0 && this.taskOffset < this.taskTotal
        ? button(`Show ${Math.min(TASK_PAGE, remaining)} more`, { size: "sm", onclick: () => this.loadTasks(false) }) : null);
  }

  taskRow(task, live) {
    let row = this.tasks.get(task.task_id);
    if (!row) {
      const cells = { status: h("td"), name: h("td", { class: "task-name" }), duration: h("td", { class: "num" }),
        cpu: h("td", { class: "num col-md" }), mem: h("td", { class: "num col-md" }), exit: h("td", { class: "num" }) };
      const el = h("tr", { dataset: { taskId: task.task_id } }, cells.status, cells.name, cells.duration, cells.cpu,
        cells.mem, cells.exit);
      row = { el, cells, task: {} };
      this.tasks.set(task.task_id, row);
      if (live && task.status === "FAILED") this.taskBody.prepend(el); else this.taskBody.append(el);
    }
    Object.assign(row.task, Object.fromEntries(Object.entries(task).filter(([, v]) => v !== null && v !== undefined)));
    const t = row.task;
    row.el.dataset.status = t.status;
    replace(row.cells.status, statusBadge(t.status));
    row.cells.name.textContent = t.name || `task ${t.task_id}`;
    row.cells.name.title = [t.hash ? `hash ${t.hash}` : null, t.workdir].filter(Boolean).join("\n");
    row.cells.duration.textContent = fmtDuration(t.realtime ?? t.duration);
    row.cells.cpu.textContent = fmtPercent(t.cpu_percent);
    row.cells.mem.textContent = fmtBytes(t.peak_rss);
    row.cells.exit.textContent = t.exit ?? "—";
    row.el.classList.toggle("row-bad", t.status === "FAILED");
  }

  taskEvent(task) {
    if (task.run_id !== this.runId || !this.run) return;
    const known = this.tasks.has(task.task_id);
    const matches = !this.taskFilter || task.status === this.taskFilter;
    if (known) {
      this.taskRow(task, true);
    } else if (matches) {
      this.taskTotal += 1;
      if (this.tasks.size < this.taskOffset + TASK_PAGE) {
        this.taskRow(task, true);
        this.taskOffset += 1;
      }
      this.renderTaskFooter();
    }
  }

  // ---- console log ------------------------------------------------------------------------------------------------

  async tail() {
    clearTimeout(this.logTimer);
    if (this.disposed || this.tailing) return;
    this.tailing = true;
    try {
      for (;;) {
        const response = await api(`/api/projects/${this.view.id}/runs/${this.runId}/log`,
          { query: { offset: this.logOffset }, raw: true });
        const bytes = new Uint8Array(await response.arrayBuffer());
        if (this.disposed) return;
        const size = Number(response.headers.get("X-Log-Size") || 0);
        const next = Number(response.headers.get("X-Log-Offset") || this.logOffset + bytes.length);
        if (bytes.length) this.appendLog(this.decoder.decode(bytes, { stream: true }));
        this.logOffset = next;
        if (next >= size || !bytes.length) break;
      }
      if (!this.logChars) this.logPre.textContent = this.active ? "Waiting for output…" : "(no output)";
    } catch (err) {
      if (!this.disposed) {
        this.logNote.hidden = false;
        this.logNote.textContent = `The log could not be read: ${friendlyError(err)}`;
      }
    } finally {
      this.tailing = false;
    }
    if (!this.disposed && this.active) {
      if (Date.now() - this.lastRunEvent > 5000) this.poll(); // no live events lately (a proxy may buffer them)
      this.logTimer = setTimeout(() => this.tail(), 1000);
    }
  }

  async poll() {
    this.lastRunEvent = Date.now();
    try {
      const { run } = await api(`/api/projects/${this.view.id}/runs/${this.runId}`);
      if (!this.disposed && (run.status !== this.run.status || run.completed_processes !== this.run.completed_processes)) {
        this.view.applyRun(run);
      }
    } catch { /* the next poll tries again */ }
  }

  appendLog(text) {
    if (!this.logChars) this.logPre.textContent = "";
    this.logPre.append(text);
    this.logChars += text.length;
    if (this.logChars > LOG_KEEP) {
      // Keep the page light on very long logs: drop the oldest lines from the screen (the full log is a link away).
      const all = this.logPre.textContent;
      const cut = all.indexOf("\n", all.length - LOG_KEEP / 2);
      this.logPre.textContent = all.slice(cut + 1);
      this.logChars = this.logPre.textContent.length;
      this.logNote.hidden = false;
      this.logNote.textContent = "Earlier lines are not shown here; open the full log to see everything.";
    }
    if (this.follow.checked) this.logPre.scrollTop = this.logPre.scrollHeight;
  }
}
