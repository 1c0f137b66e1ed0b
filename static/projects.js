// nfhub page: the projects list (name, pipeline, state, progress) with create, rename and delete.
import { api, friendlyError } from "./api.js";
import { ACTIVE, button, confirmDialog, emptyState, h, progressBar, promptDialog, replace, statusBadge, timeEl,
  toast } from "./ui.js";

export async function createProject() {
  const project = await promptDialog({
    title: "New project", label: "Project name", confirmLabel: "Create project",
    submit: async (name) => (await api("/api/projects/create", { method: "POST", json: { name } })).project,
  });
  if (project) location.hash = `#/p/${project.id}/files`;
}

export async function renameProject(project, after) {
  const name = await promptDialog({
    title: "Rename project", label: "Project name", value: project.name, confirmLabel: "Rename",
    submit: async (value) => {
      await api(`/api/projects/${project.id}/update`, { method: "POST", json: { name: value } });
      return value;
    },
  });
  if (name) {
    toast(`Renamed to “${name}”.`, "success");
    if (after) after(name);
  }
}

export async function deleteProject(project, after) {
  const ok = await confirmDialog({
    title: `Delete “${project.name}”?`,
    message: "Its files, results and run history are deleted for good. This cannot be undone.",
    confirmLabel: "Delete project", danger: true,
  });
  if (!ok) return;
  try {
    await api(`/api/projects/${project.id}/delete`, { method: "POST" });
    toast(`Deleted “${project.name}”.`, "success");
    if (after) after();
  } catch (err) {
    toast(err.status === 409 ? "This project has a run in progress: cancel it first, then delete the project."
      : friendlyError(err), "error");
  }
}

export class ProjectsView {
  constructor(main) {
    this.main = main;
    this.rows = new Map();
    this.timer = null;
    this.disposed = false;
    document.title = "Projects · nfhub";
    this.count = h("p", { class: "page-subtitle muted" }, "Loading…");
    this.body = h("div", { class: "card" }, h("div", { class: "loading" }, "Loading projects…"));
    replace(main,
      h("div", { class: "page-head" },
        h("div", {}, h("h1", { class: "page-title", tabindex: "-1" }, "Projects"), this.count),
        button("New project", { kind: "primary", iconName: "plus", onclick: () => createProject() })),
      this.body);
    this.load();
  }

  dispose() {
    this.disposed = true;
    clearTimeout(this.timer);
  }

  async load() {
    if (this.disposed) return;
    let projects;
    try {
      ({ projects } = await api("/api/projects"));
    } catch (err) {
      if (this.disposed) return;
      replace(this.body, h("div", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
      this.timer = setTimeout(() => this.load(), 5000);
      return;
    }
    if (this.disposed) return;
    this.render(projects);
    // While something runs the list follows it closely; otherwise it looks now and then for changes made elsewhere.
    const active = projects.some((p) => ACTIVE.has(p.status));
    this.timer = setTimeout(() => this.load(), active ? 1500 : 15000);
  }

  render(projects) {
    this.count.textContent = projects.length === 1 ? "1 project" : `${projects.length} projects`;
    if (!projects.length) {
      this.rows.clear();
      this.table = null;
      replace(this.body, emptyState("No projects yet",
        "A project is a folder for your input files, a pipeline with its settings, and the runs and results.",
        button("Create your first project", { kind: "primary", iconName: "plus", onclick: () => createProject() })));
      return;
    }
    if (!this.table) {
      this.tbody = h("tbody");
      this.table = h("table", { class: "table table-projects" },
        h("caption", { class: "sr-only" }, "Your projects"),
        h("thead", {}, h("tr", {},
          h("th", { scope: "col" }, "Name"), h("th", { scope: "col", class: "col-md" }, "Pipeline"),
          h("th", { scope: "col" }, "State"), h("th", { scope: "col", class: "col-progress" }, "Progress"),
          h("th", { scope: "col", class: "col-lg" }, "Updated"), h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
        this.tbody);
      replace(this.body, h("div", { class: "table-scroll" }, this.table));
      this.rows.clear();
    }
    const seen = new Set();
    projects.forEach((project, i) => {
      seen.add(project.id);
      let row = this.rows.get(project.id);
      if (!row) {
        row = this.makeRow(project);
        this.rows.set(project.id, row);
      }
      row.update(project);
      if (this.tbody.children[i] !== row.el) this.tbody.insertBefore(row.el, this.tbody.children[i] || null);
    });
    for (const [id, row] of this.rows) {
      if (!seen.has(id)) {
        row.el.remove();
        this.rows.delete(id);
      }
    }
  }

  makeRow(initial) {
    let project = initial;
    const link = h("a", { class: "project-link", href: `#/p/${project.id}/files` });
    const shared = h("span", { class: "badge badge-none" });
    const pipeline = h("td", { class: "col-md" });
    const status = h("td");
    const bar = progressBar(`Progress of ${project.name}`);
    const counts = h("span", { class: "progress-count muted" });
    const updated = h("td", { class: "col-lg" });
    const rename = button("Rename", { kind: "ghost", iconName: "edit", iconOnly: true, size: "sm",
      onclick: () => renameProject(project, () => this.reload()) });
    const del = button("Delete", { kind: "ghost", iconName: "trash", iconOnly: true, size: "sm",
      onclick: () => deleteProject(project, () => this.reload()) });
    const el = h("tr", { dataset: { projectId: project.id } },
      h("th", { scope: "row" }, link, shared), pipeline, status,
      h("td", { class: "col-progress" }, h("div", { class: "progress-cell" }, bar.el, counts)),
      updated, h("td", { class: "actions" }, rename, del));
    const update = (p) => {
      project = p;
      link.textContent = p.name;
      shared.textContent = p.access === "owner" ? "" : `shared · ${p.access}`;
      shared.hidden = p.access === "owner";
      replace(pipeline, p.nextflow_project ? p.nextflow_project : h("span", { class: "muted" }, "none chosen"));
      replace(status, statusBadge(p.status));
      bar.el.setAttribute("aria-label", `Progress of ${p.name}`);
      bar.set(p.status, p.submitted_processes, p.completed_processes);
      counts.textContent = p.status ? `${p.completed_processes}/${p.submitted_processes}` : "";
      replace(updated, timeEl(p.updated_at, true));
      rename.setAttribute("aria-label", `Rename ${p.name}`);
      del.setAttribute("aria-label", `Delete ${p.name}`);
      rename.disabled = !["owner", "write", "admin"].includes(p.access);
      del.disabled = !["owner", "admin"].includes(p.access);
    };
    return { el, update };
  }

  reload() {
    clearTimeout(this.timer);
    this.load();
  }
}
