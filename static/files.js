// nfhub page: the project's files — browse, create folders, delete, download (folders as zip), upload (button and
// drag and drop, files and whole folders, per-file progress, resumable chunks for large files), preview.
import { ApiError, api, downloadUrl, errorFrom, friendlyError, getToken, joinPath } from "./api.js";
import { ACTIVE, button, confirmDialog, emptyState, fmtBytes, h, icon, modal, progressBar, promptDialog, replace, timeEl,
  toast } from "./ui.js";

export async function listDir(projectId, dir) {
  const answer = await api(`/api/projects/${projectId}/files`, { query: { dir } });
  return answer.entries || [
    ...answer.folders.map((name) => ({ name, type: "folder", size: null, modified: null })),
    ...answer.files.map((name) => ({ name, type: "file", size: null, modified: null })),
  ];
}

export function dirHref(projectId, dir) {
  return `#/p/${projectId}/files${dir ? `/${dir.split("/").map(encodeURIComponent).join("/")}` : ""}`;
}

/** A link that downloads; the token is put into its address only at the moment it is followed. */
export function downloadLink(projectId, path, content, props = {}) {
  const plain = `/api/projects/${projectId}/download?path=${encodeURIComponent(path)}`;
  const a = h("a", { href: plain, download: "", ...props }, content);
  const arm = () => {
    a.href = downloadUrl(projectId, path);
    setTimeout(() => { a.href = plain; }, 0);
  };
  a.addEventListener("click", arm);
  a.addEventListener("auxclick", arm);
  return a;
}

// ---- preview ----------------------------------------------------------------------------------------------------

const IMAGE = /\.(png|jpe?g|gif|webp|svg|bmp|ico|avif)$/i;
const HTML = /\.html?$/i;
const TABLE = /\.(csv|tsv)$/i;
const TEXT = /\.(txt|log|out|err|md|json|ya?ml|nf|config|toml|ini|cfg|sh|py|r|pl|tsv|csv|fa|fasta|fna|faa|fastq|fq|sam|vcf|bed|gff3?|gtf|tab|xml|nwk|newick|sizes|version|versions|mqc|stats?|summary|metrics|html?)$/i;
const TEXT_LIMIT = 512 * 1024;
const IMAGE_LIMIT = 32 * 1024 * 1024;
const HTML_LIMIT = 64 * 1024 * 1024;

export function previewKind(name) {
  if (IMAGE.test(name)) return "image";
  if (HTML.test(name)) return "html";
  if (TABLE.test(name)) return "table";
  if (TEXT.test(name) || !/\.[^/.]+$/.test(name)) return "text";
  return null;
}

async function fetchFile(projectId, path, range) {
  const headers = { "x-access-token": getToken() };
  if (range) headers.range = `bytes=0-${range - 1}`;
  const response = await fetch(`/api/projects/${projectId}/download?path=${encodeURIComponent(path)}`,
    { headers, cache: "no-store" });
  if (!response.ok) throw await errorFrom(response);
  return response;
}

function parseDelimited(text, sep) {
  // Enough for reports and sample sheets: quoted fields with doubled quotes; no embedded newlines.
  return text.split(/\r?\n/).filter((line) => line.length).map((line) => {
    const cells = [];
    let cur = "";
    let quoted = false;
    for (let i = 0; i < line.length; i += 1) {
      const c = line[i];
      if (quoted) {
        if (c === '"' && line[i + 1] === '"') { cur += '"'; i += 1; } else if (c === '"') quoted = false; else cur += c;
      } else if (c === '"' && cur === "") quoted = true;
      else if (c === sep) { cells.push(cur); cur = ""; } else cur += c;
    }
    cells.push(cur);
    return cells;
  });
}

export function openPreview(projectId, entry, path) {
  let objectUrl = null;
  const kind = previewKind(entry.name);
  return modal((dialog, close) => {
    const body = h("div", { class: "preview-body" }, h("div", { class: "loading" }, "Loading preview…"));
    dialog.append(
      h("div", { class: "preview-head" },
        h("div", { class: "preview-title" }, icon(kind === "image" ? "image" : "file"),
          h("h2", { class: "dialog-title" }, entry.name),
          entry.size !== null && entry.size !== undefined ? h("span", { class: "muted" }, fmtBytes(entry.size)) : null),
        h("div", { class: "preview-actions" },
          downloadLink(projectId, path, [icon("download"), h("span", {}, "Download")], { class: "btn btn-secondary btn-sm" }),
          button("Close", { kind: "ghost", iconName: "close", iconOnly: true, onclick: () => close() }))),
      body);
    fill(body).catch((err) => {
      replace(body, h("p", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
    });
    async function fill(b) {
      if (kind === "image" || kind === "html") {
        const limit = kind === "image" ? IMAGE_LIMIT : HTML_LIMIT;
        if (entry.size > limit) {
          replace(b, h("p", { class: "notice" }, `This file is too large to show here (${fmtBytes(entry.size)}). Download it instead.`));
          return;
        }
        if (kind === "image") {
          const blob = await (await fetchFile(projectId, path)).blob();
          const type = /\.svg$/i.test(entry.name) ? "image/svg+xml" : blob.type;
          objectUrl = URL.createObjectURL(new Blob([blob], { type }));
          replace(b, h("div", { class: "preview-image" }, h("img", { src: objectUrl, alt: entry.name })));
        } else {
          // A user's HTML (e.g. a MultiQC report) gets a short-lived view link: its scripts run in an opaque-origin
          // sandbox (no access to this page, its storage or its token) and the server's CSP lets it send nothing.
          const { url } = await api(`/api/projects/${projectId}/view-link`, { method: "POST", json: { path } });
          replace(b,
            h("iframe", { class: "preview-frame", sandbox: "allow-scripts", src: url, title: `Report ${entry.name}`,
                          referrerpolicy: "no-referrer" }));
        }
        return;
      }
      if (entry.size === 0) {
        replace(b, h("p", { class: "notice" }, "This file is empty."));
        return;
      }
      const response = await fetchFile(projectId, path, entry.size > TEXT_LIMIT ? TEXT_LIMIT : null);
      const buffer = await response.arrayBuffer();
      const truncated = response.status === 206 || buffer.byteLength >= TEXT_LIMIT;
      const text = new TextDecoder("utf-8", { fatal: false }).decode(buffer);
      if (/\u0000/.test(text.slice(0, 4096))) {
        replace(b, h("p", { class: "notice" }, "This looks like a binary file. Download it to open it."));
        return;
      }
      const note = truncated ? h("p", { class: "muted small preview-note" },
        `Showing the first ${fmtBytes(TEXT_LIMIT)} of ${fmtBytes(entry.size)}.`) : null;
      if (kind === "table") {
        const rows = parseDelimited(truncated ? text.slice(0, text.lastIndexOf("\n")) : text,
          /\.tsv$/i.test(entry.name) ? "\t" : ",");
        const shown = rows.slice(0, 1001);
        const [head, ...rest] = shown;
        replace(b, note, rows.length > 1001 ? h("p", { class: "muted small preview-note" }, `Showing 1000 of ${rows.length - 1} rows.`) : null,
          h("div", { class: "table-scroll preview-table" }, h("table", { class: "table table-compact" },
            h("thead", {}, h("tr", {}, (head || []).map((c) => h("th", { scope: "col" }, c)))),
            h("tbody", {}, rest.map((r) => h("tr", {}, r.map((c) => h("td", {}, c))))))));
        return;
      }
      replace(b, note, h("pre", { class: "preview-text", tabindex: "0", "aria-label": `Contents of ${entry.name}` }, text));
    }
  }, { className: "dialog-preview", label: `Preview of ${entry.name}` }).then(() => {
    if (objectUrl) URL.revokeObjectURL(objectUrl);
  });
}

// ---- uploads ----------------------------------------------------------------------------------------------------

const MAX_PARALLEL = 2;
const RETRIES = 6;

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function parseJSON(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** One multipart POST with upload progress; resolves {status, body}: status 0 = network error, -1 = aborted. */
function send(url, form, item, onProgress) {
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    item.xhr = xhr;
    xhr.open("POST", url);
    xhr.setRequestHeader("x-access-token", getToken());
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded));
    xhr.addEventListener("load", () => resolve({ status: xhr.status, body: parseJSON(xhr.responseText) }));
    xhr.addEventListener("error", () => resolve({ status: 0, body: null }));
    xhr.addEventListener("abort", () => resolve({ status: -1, body: null }));
    xhr.send(form);
  });
}

function failure(result) {
  const body = result.body || {};
  return new ApiError(result.status, body.error || `HTTP ${result.status}`, body.details);
}

let nextUploadId = 1;

/** The upload queue of one project: survives switching tabs; at most two files travel at once. */
export class Uploads extends EventTarget {
  constructor(view) {
    super();
    this.view = view;
    this.items = [];
  }

  active() {
    return this.items.some((i) => i.state === "waiting" || i.state === "uploading");
  }

  /** files: [{file, dir}] where dir is the target folder inside the project. */
  add(files) {
    for (const { file, dir } of files) {
      this.items.push({ id: nextUploadId++, file, dir, name: file.name, path: joinPath(dir, file.name),
                        loaded: 0, total: file.size, state: "waiting", message: "", xhr: null, chunked: false });
    }
    this.changed();
    this.pump();
  }

  changed(item) {
    this.dispatchEvent(new CustomEvent("change", { detail: item || null }));
  }

  pump() {
    const running = this.items.filter((i) => i.state === "uploading").length;
    const waiting = this.items.filter((i) => i.state === "waiting");
    for (const item of waiting.slice(0, Math.max(0, MAX_PARALLEL - running))) {
      item.state = "uploading";
      this.run(item).then(() => {
        this.changed(item);
        if (item.state === "done") this.dispatchEvent(new CustomEvent("uploaded", { detail: item }));
        this.pump();
      });
    }
  }

  cancel(item) {
    if (item.state === "waiting") item.state = "cancelled";
    else if (item.xhr) item.cancelled = true;
    if (item.xhr) item.xhr.abort();
    this.changed(item);
  }

  retry(item) {
    Object.assign(item, { state: "waiting", message: "", cancelled: false, loaded: 0 });
    this.changed(item);
    this.pump();
  }

  clearFinished() {
    this.items = this.items.filter((i) => i.state === "waiting" || i.state === "uploading");
    this.changed();
  }

  async run(item) {
    const { chunkThreshold } = window.nfhub.config;
    try {
      if (item.total > chunkThreshold) await this.chunked(item);
      else await this.plain(item);
    } catch (err) {
      if (item.cancelled) {
        item.state = "cancelled";
        item.message = "Cancelled";
      } else {
        item.state = "failed";
        item.message = friendlyError(err);
      }
    }
    item.xhr = null;
  }

  url() {
    return `/api/projects/${this.view.id}/upload-file`;
  }

  async plain(item) {
    const form = new FormData();
    form.append("directory", item.dir);
    form.append("file", item.file, item.name);
    const result = await send(this.url(), form, item, (loaded) => {
      item.loaded = Math.min(loaded, item.total);
      this.changed(item);
    });
    if (result.status === -1) throw new Error("cancelled");
    if (result.status !== 200) throw failure(result);
    item.loaded = item.total;
    item.state = "done";
    item.message = "Uploaded";
  }

  /** The resumable protocol: slices with offset/total; ask upload-status to resume after any interruption. */
  async chunked(item) {
    const { chunkSize } = window.nfhub.config;
    item.chunked = true;
    const total = item.total;
    const status = async () => {
      const answer = await api(`/api/projects/${this.view.id}/upload-status`, { query: { path: item.path, total } });
      return answer.total === total ? answer.received : 0;
    };
    let offset = await status();
    if (offset) item.message = `Resuming at ${fmtBytes(offset)}`;
    item.loaded = offset;
    this.changed(item);
    let failures = 0;
    let conflicts = 0;
    for (;;) {
      const end = Math.min(offset + chunkSize, total);
      const form = new FormData();
      form.append("directory", item.dir);
      form.append("offset", String(offset));
      form.append("total", String(total));
      form.append("file", item.file.slice(offset, end), item.name);
      const start = offset;
      const result = await send(this.url(), form, item, (loaded) => {
        item.loaded = Math.min(start + loaded, total);
        this.changed(item);
      });
      if (result.status === -1) throw new Error("cancelled");
      if (result.status === 200 && result.body) {
        failures = 0;
        offset = result.body.received;
        item.loaded = offset;
        item.message = "";
        this.changed(item);
        if (result.body.complete) break;
        continue;
      }
      const received = result.body && result.body.details && result.body.details.received;
      if (result.status === 409 && Number.isInteger(received) && conflicts < 20) {
        conflicts += 1;
        if (received === offset) await sleep(500 * conflicts); // the same file is being sent elsewhere right now
        offset = received;
        continue;
      }
      if ((result.status === 0 || result.status === 502 || result.status === 503 || result.status === 504)
          && failures < RETRIES) {
        failures += 1;
        item.message = `Connection lost; retrying (${failures}/${RETRIES})…`;
        this.changed(item);
        await sleep(Math.min(30000, 1000 * 2 ** (failures - 1)));
        try {
          offset = await status();
        } catch {
          /* still unreachable: the next attempt will tell */
        }
        continue;
      }
      throw failure(result);
    }
    item.loaded = total;
    item.state = "done";
    item.message = "Uploaded";
  }
}

/** Files of a drop, folders walked recursively: [{file, rel}] with rel the sub-folder inside the drop. */
async function droppedFiles(dataTransfer) {
  // Entries must be taken synchronously, while the drop event is being dispatched.
  const entries = [...dataTransfer.items].filter((i) => i.kind === "file")
    .map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  const plain = [...dataTransfer.files];
  if (!entries.length || entries.some((e) => !e)) return plain.map((file) => ({ file, rel: "" }));
  const out = [];
  const readAll = (reader) => new Promise((resolve, reject) => reader.readEntries(resolve, reject));
  async function walk(entry, rel) {
    if (entry.isFile) {
      out.push({ file: await new Promise((resolve, reject) => entry.file(resolve, reject)), rel });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (let batch = await readAll(reader); batch.length; batch = await readAll(reader)) {
        for (const child of batch) await walk(child, joinPath(rel, entry.name));
      }
    }
  }
  for (const entry of entries) await walk(entry, "");
  return out;
}

// ---- the files tab ----------------------------------------------------------------------------------------------

export class FilesTab {
  constructor(view, panel) {
    this.view = view;
    this.panel = panel;
    this.dir = null;
    this.sort = { key: "name", dir: 1 };
    this.entries = [];
    this.onUploads = (e) => this.renderUploads(e.detail);
    this.onUploaded = () => this.refreshSoon();
    this.onRun = (e) => {
      if (!ACTIVE.has(e.detail.status)) this.refreshSoon();
    };
    view.uploads.addEventListener("change", this.onUploads);
    view.uploads.addEventListener("uploaded", this.onUploaded);
    view.live.addEventListener("run", this.onRun);
    this.build();
  }

  dispose() {
    this.view.uploads.removeEventListener("change", this.onUploads);
    this.view.uploads.removeEventListener("uploaded", this.onUploaded);
    this.view.live.removeEventListener("run", this.onRun);
    clearTimeout(this.refreshTimer);
  }

  build() {
    const write = this.view.canWrite;
    this.fileInput = h("input", { type: "file", multiple: true, class: "sr-only", tabindex: "-1", "aria-hidden": "true" });
    this.folderInput = h("input", { type: "file", multiple: true, webkitdirectory: true, class: "sr-only",
                                    tabindex: "-1", "aria-hidden": "true" });
    this.fileInput.addEventListener("change", () => this.picked(this.fileInput));
    this.folderInput.addEventListener("change", () => this.picked(this.folderInput));
    this.crumbs = h("nav", { class: "breadcrumb files-crumbs", "aria-label": "Folder" });
    this.zipLink = h("span");
    const toolbar = h("div", { class: "toolbar" },
      this.crumbs,
      h("div", { class: "toolbar-actions" },
        write ? button("Upload files", { kind: "primary", iconName: "upload", onclick: () => this.fileInput.click() }) : null,
        write ? button("Upload folder", { iconName: "folderUp", onclick: () => this.folderInput.click() }) : null,
        write ? button("New folder", { iconName: "folderPlus", onclick: () => this.newFolder() }) : null,
        this.zipLink,
        button("Refresh", { kind: "ghost", iconName: "refresh", iconOnly: true, onclick: () => this.load() })));
    this.listing = h("div", { class: "files-listing" }, h("div", { class: "loading" }, "Loading files…"));
    this.uploadsBox = h("section", { class: "uploads card", "aria-label": "Uploads", hidden: true });
    this.overlay = h("div", { class: "drop-overlay", "aria-hidden": "true" },
      h("div", { class: "drop-overlay-inner" }, icon("upload"), h("p", {}, "Drop files or folders to upload them here")));
    this.drop = h("div", { class: "dropzone card" }, toolbar, this.listing, this.overlay,
      h("p", { class: "drop-hint muted small" }, write ? "Tip: drag files or whole folders from your computer onto this panel."
        : `You have ${this.view.project.access} access: you can open and download these files, but not change them.`));
    replace(this.panel, this.fileInput, this.folderInput, this.uploadsBox, this.drop);
    if (write) this.enableDrop();
    this.renderUploads();
  }

  enableDrop() {
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && [...e.dataTransfer.types].includes("Files");
    this.drop.addEventListener("dragenter", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth += 1;
      this.drop.classList.add("dragging");
    });
    this.drop.addEventListener("dragover", (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = "copy";
    });
    this.drop.addEventListener("dragleave", () => {
      depth = Math.max(0, depth - 1);
      if (!depth) this.drop.classList.remove("dragging");
    });
    this.drop.addEventListener("drop", async (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      this.drop.classList.remove("dragging");
      const dir = this.dir;
      const files = await droppedFiles(e.dataTransfer);
      this.queue(files.map(({ file, rel }) => ({ file, dir: joinPath(dir, rel) })));
    });
  }

  picked(input) {
    const files = [...input.files].map((file) => {
      const rel = file.webkitRelativePath ? file.webkitRelativePath.split("/").slice(0, -1).join("/") : "";
      return { file, dir: joinPath(this.dir, rel) };
    });
    input.value = "";
    this.queue(files);
  }

  queue(files) {
    // Hidden files (.DS_Store, .git/…) come along with folders but are not allowed as project files.
    const hidden = (f) => f.file.name.startsWith(".") || f.dir.split("/").some((s) => s.startsWith("."));
    const skipped = files.filter(hidden);
    const wanted = files.filter((f) => !hidden(f));
    if (skipped.length) toast(`Skipped ${skipped.length} hidden file${skipped.length > 1 ? "s" : ""} (names starting with “.”).`);
    if (wanted.length) this.view.uploads.add(wanted);
  }

  update(route) {
    const dir = route.dir || "";
    if (dir === this.dir) return;
    this.dir = dir;
    this.renderCrumbs();
    this.load();
  }

  renderCrumbs() {
    const pid = this.view.id;
    const parts = this.dir ? this.dir.split("/") : [];
    const items = [h(parts.length ? "a" : "span", { href: parts.length ? dirHref(pid, "") : null,
      "aria-current": parts.length ? null : "location", class: "crumb-root" }, icon("folder"), "Project files")];
    parts.forEach((part, i) => {
      const path = parts.slice(0, i + 1).join("/");
      const last = i === parts.length - 1;
      items.push(h("span", { class: "sep", "aria-hidden": "true" }, "/"));
      items.push(last ? h("span", { "aria-current": "location" }, part) : h("a", { href: dirHref(pid, path) }, part));
    });
    replace(this.crumbs, items);
    replace(this.zipLink, downloadLink(pid, this.dir,
      [icon("download"), h("span", {}, parts.length ? "Download folder" : "Download all")],
      { class: "btn btn-secondary", title: "Download this folder as a zip file" }));
  }

  refreshSoon() {
    clearTimeout(this.refreshTimer);
    this.refreshTimer = setTimeout(() => this.load(), 300);
  }

  async load() {
    const dir = this.dir;
    try {
      this.entries = await listDir(this.view.id, dir);
    } catch (err) {
      if (dir !== this.dir) return;
      replace(this.listing, err.status === 404
        ? emptyState("This folder does not exist", "It may have been deleted or renamed.",
          h("a", { class: "btn btn-secondary", href: dirHref(this.view.id, "") }, "Go to the project folder"))
        : h("p", { class: "notice notice-error", role: "alert" }, friendlyError(err)));
      return;
    }
    if (dir !== this.dir) return;
    this.renderListing();
  }

  sortBy(key) {
    this.sort = { key, dir: this.sort.key === key ? -this.sort.dir : (key === "name" ? 1 : -1) };
    this.renderListing();
    const th = this.listing.querySelector(`[data-sort="${key}"] button`);
    if (th) th.focus();
  }

  renderListing() {
    const pid = this.view.id;
    const write = this.view.canWrite;
    if (!this.entries.length) {
      replace(this.listing, emptyState(this.dir ? "This folder is empty" : "No files yet",
        write ? "Upload your input files with the buttons above, or drop them here." : null));
      return;
    }
    const { key, dir } = this.sort;
    const entries = [...this.entries].sort((a, b) => {
      if (a.type !== b.type) return a.type === "folder" ? -1 : 1;
      const va = key === "name" ? a.name.toLowerCase() : key === "size" ? a.size || 0 : a.modified || "";
      const vb = key === "name" ? b.name.toLowerCase() : key === "size" ? b.size || 0 : b.modified || "";
      return (va < vb ? -1 : va > vb ? 1 : 0) * dir;
    });
    const header = (label, k, cls) => h("th", { scope: "col", class: cls, dataset: { sort: k },
      "aria-sort": this.sort.key === k ? (this.sort.dir > 0 ? "ascending" : "descending") : "none" },
      h("button", { type: "button", class: "sort-btn", onclick: () => this.sortBy(k) }, label,
        h("span", { class: "sort-mark", "aria-hidden": "true" }, this.sort.key === k ? (this.sort.dir > 0 ? "▲" : "▼") : "")));
    const rows = entries.map((entry) => {
      const path = joinPath(this.dir, entry.name);
      let name;
      if (entry.type === "folder") {
        name = h("a", { href: dirHref(pid, path), class: "file-name" }, icon("folder"), h("span", {}, entry.name));
      } else if (previewKind(entry.name)) {
        name = h("button", { type: "button", class: "file-name link-btn", title: "Preview",
          onclick: () => openPreview(pid, entry, path) }, icon(previewKind(entry.name) === "image" ? "image" : "file"),
        h("span", {}, entry.name));
      } else {
        name = downloadLink(pid, path, [icon("file"), h("span", {}, entry.name)], { class: "file-name", title: "Download" });
      }
      return h("tr", { dataset: { name: entry.name, type: entry.type } },
        h("th", { scope: "row", class: "col-name" }, name),
        h("td", { class: "num" }, entry.type === "folder" ? h("span", { class: "muted" }, "folder") : fmtBytes(entry.size)),
        h("td", { class: "col-md" }, timeEl(entry.modified)),
        h("td", { class: "actions" },
          entry.type === "file" && previewKind(entry.name)
            ? button(`Preview ${entry.name}`, { kind: "ghost", iconName: "eye", iconOnly: true, size: "sm",
              onclick: () => openPreview(pid, entry, path) }) : null,
          downloadLink(pid, path, icon("download"), { class: "btn btn-ghost btn-sm btn-icon",
            "aria-label": entry.type === "folder" ? `Download ${entry.name} as zip` : `Download ${entry.name}`,
            title: entry.type === "folder" ? "Download as zip" : "Download" }),
          write ? button(`Delete ${entry.name}`, { kind: "ghost", iconName: "trash", iconOnly: true, size: "sm",
            onclick: () => this.remove(entry, path) }) : null));
    });
    const folders = entries.filter((e) => e.type === "folder").length;
    const files = entries.length - folders;
    const bytes = entries.reduce((n, e) => n + (e.size || 0), 0);
    replace(this.listing, h("div", { class: "table-scroll" }, h("table", { class: "table table-files" },
      h("caption", { class: "sr-only" }, `Contents of ${this.dir || "the project folder"}`),
      h("thead", {}, h("tr", {}, header("Name", "name"), header("Size", "size", "num"), header("Modified", "modified", "col-md"),
        h("th", { scope: "col" }, h("span", { class: "sr-only" }, "Actions")))),
      h("tbody", {}, rows))),
    h("p", { class: "listing-summary muted small" },
      [folders ? `${folders} folder${folders > 1 ? "s" : ""}` : null, files ? `${files} file${files > 1 ? "s" : ""} (${fmtBytes(bytes)})` : null]
        .filter(Boolean).join(", ")));
  }

  async newFolder() {
    const name = await promptDialog({
      title: "New folder", label: "Folder name", confirmLabel: "Create folder",
      submit: async (value) => {
        await api(`/api/projects/${this.view.id}/create-folder`, { method: "POST",
          json: { path: joinPath(this.dir, value) } });
      },
    });
    if (name) {
      toast(`Created folder “${name}”.`, "success");
      this.load();
    }
  }

  async remove(entry, path) {
    const folder = entry.type === "folder";
    const ok = await confirmDialog({
      title: `Delete “${entry.name}”?`,
      message: folder ? "The folder and everything in it are deleted for good." : "The file is deleted for good.",
      confirmLabel: folder ? "Delete folder" : "Delete file", danger: true,
    });
    if (!ok) return;
    try {
      await api(`/api/projects/${this.view.id}/delete-path`, { method: "POST", json: { path } });
      toast(`Deleted “${entry.name}”.`, "success");
    } catch (err) {
      toast(friendlyError(err), "error");
    }
    this.load();
  }

  renderUploads(item) {
    const uploads = this.view.uploads;
    if (!uploads.items.length) {
      this.uploadsBox.hidden = true;
      replace(this.uploadsBox);
      this.rowsById = new Map();
      return;
    }
    this.uploadsBox.hidden = false;
    if (!this.rowsById || !this.uploadsList || !item) {
      this.rowsById = new Map();
      this.uploadsTitle = h("h2", { class: "h3" });
      this.uploadsLive = h("p", { class: "sr-only", "aria-live": "polite" });
      this.uploadsList = h("ul", { class: "upload-list" });
      replace(this.uploadsBox, h("div", { class: "uploads-head" }, this.uploadsTitle,
        button("Clear finished", { kind: "ghost", size: "sm", onclick: () => uploads.clearFinished() })),
      this.uploadsList, this.uploadsLive);
      for (const it of uploads.items) this.uploadRow(it);
    } else {
      this.uploadRow(item);
    }
    const done = uploads.items.filter((i) => i.state === "done").length;
    this.uploadsTitle.textContent = `Uploads · ${done} of ${uploads.items.length} done`;
    if (item && (item.state === "done" || item.state === "failed")) {
      this.uploadsLive.textContent = item.state === "done" ? `${item.path} uploaded.` : `${item.path} failed: ${item.message}`;
    }
  }

  uploadRow(item) {
    let row = this.rowsById.get(item.id);
    if (!row) {
      const bar = progressBar(`Upload of ${item.path}`);
      const text = h("span", { class: "upload-status" });
      const action = h("span", { class: "upload-action" });
      const el = h("li", { class: "upload-item", dataset: { path: item.path } },
        h("div", { class: "upload-name" }, icon("file"), h("span", { title: item.path }, item.path)),
        bar.el, text, action);
      row = { el, bar, text, action, state: null };
      this.rowsById.set(item.id, row);
      this.uploadsList.append(el);
    }
    const pct = item.total ? Math.floor((item.loaded / item.total) * 100) : 100;
    const status = { waiting: "queued", uploading: "running", done: "succeeded", failed: "failed", cancelled: "cancelled" }[item.state];
    row.bar.set(status, item.total || 1, item.total ? item.loaded : 1);
    row.el.dataset.state = item.state;
    const amount = `${fmtBytes(item.loaded)} of ${fmtBytes(item.total)}`;
    row.text.textContent = item.state === "uploading" ? `${pct} % · ${amount}${item.message ? ` · ${item.message}` : ""}`
      : item.state === "waiting" ? "Waiting…" : item.state === "done" ? `Done · ${fmtBytes(item.total)}` : item.message;
    row.text.classList.toggle("text-bad", item.state === "failed");
    if (row.state !== item.state) {
      row.state = item.state;
      const uploads = this.view.uploads;
      replace(row.action,
        item.state === "waiting" || item.state === "uploading"
          ? button(`Cancel upload of ${item.path}`, { kind: "ghost", iconName: "close", iconOnly: true, size: "sm",
            onclick: () => uploads.cancel(item) })
          : item.state === "failed" || item.state === "cancelled"
            ? button(`Retry upload of ${item.path}`, { kind: "ghost", iconName: "refresh", iconOnly: true, size: "sm",
              onclick: () => uploads.retry(item) })
            : icon("check", "done"));
    }
  }
}
