// headstart studio: the page. Plain JavaScript, no build step, nothing from the network.
// Every name and text from a user is shown with textContent, never parsed as markup.
"use strict";

const TOKEN = new URLSearchParams(location.search).get("token");
const $ = (id) => document.getElementById(id);
const state = { info: null, projects: [], project: null, run: null, source: null, timer: null, flagged: new Set() };

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v);
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
}

function withToken(url) {
  return TOKEN ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(TOKEN) : url;
}

function showError(message) {
  if (message) $("upload-status").textContent = "";
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
  if (message) box.scrollIntoView({ block: "nearest" });
}

async function api(method, path, body) {
  const headers = {};
  if (TOKEN) headers["Authorization"] = "Bearer " + TOKEN;
  let payload = body;
  if (body !== undefined && !(body instanceof FormData)) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body: payload });
  } catch (err) {
    throw new Error("the studio cannot be reached (" + err.message + ")");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail || data);
    throw new Error(response.status + ": " + detail);
  }
  return data;
}

async function guarded(fn) {
  try {
    showError("");
    return await fn();
  } catch (err) {
    showError(err.message);
    return null;
  }
}

const P = () => "/api/projects/" + encodeURIComponent(state.project.id);

// ------------------------------------------------------------------ projects

async function loadProjects() {
  state.projects = (await api("GET", "/api/projects")).projects;
  const list = $("projects");
  list.replaceChildren();
  for (const p of state.projects) {
    const li = el("li", { dataset: { id: p.id }, onclick: () => guarded(() => openProject(p.id)) },
      el("span", { class: "pname", text: p.name }), el("span", { class: "badge", text: p.modality }));
    if (state.project && state.project.id === p.id) li.classList.add("active");
    list.append(li);
  }
}

async function openProject(id, keepRun) {
  const project = await api("GET", "/api/projects/" + encodeURIComponent(id));
  const switched = !state.project || state.project.id !== id;
  state.project = project;
  if (switched) {
    state.flagged.clear();
    $("check-result").replaceChildren();
    $("try-results").replaceChildren();
    $("export-result").textContent = "";
    closeEvents();
    $("live").hidden = true;
    state.run = null;
  }
  renderProject();
  await loadProjects();
  if (!keepRun) {
    const finished = project.runs.find((r) => r.state === "finished");
    const active = project.runs.find((r) => r.state === "running" || r.state === "queued");
    if (active) selectRun(active.id);
    else if (finished && switched) selectRun(finished.id);
  }
  scheduleRefresh();
}

function renderProject() {
  const p = state.project;
  $("welcome").hidden = true;
  $("project").hidden = false;
  document.body.classList.remove("modality-image", "modality-text");
  document.body.classList.add("modality-" + p.modality);
  document.body.dataset.project = p.id;
  $("project-title").textContent = p.name;
  $("project-kind").textContent = p.modality === "image" ? "images" : "texts";
  renderClasses();
  renderRuns();
}

function renderClasses() {
  const p = state.project;
  const box = $("classes");
  box.replaceChildren();
  if (!p.classes.length) box.append(el("p", { class: "muted", text: "No classes yet: add one above, or upload a " + (p.modality === "image" ? "zip or folder of class folders." : "table of texts.") }));
  for (const c of p.classes) {
    const head = el("div", { class: "class-head" },
      el("span", { class: "name", text: c.name }),
      el("span", { class: "count", text: c.count + (p.modality === "image" ? (c.count === 1 ? " image" : " images") : (c.count === 1 ? " text" : " texts")) }));
    const card = el("div", { class: "class", dataset: { class: c.name } }, head);
    if (p.modality === "image") {
      const files = el("input", { type: "file", class: "files", multiple: "", accept: "image/*", "aria-label": "images for " + c.name });
      files.addEventListener("change", () => uploadImages(c.name, [...files.files]).then(() => (files.value = "")));
      const folder = el("input", { type: "file", class: "folder", webkitdirectory: "", multiple: "", "aria-label": "a folder of images for " + c.name });
      folder.addEventListener("change", () => uploadImages(c.name, [...folder.files]).then(() => (folder.value = "")));
      head.append(el("label", { text: "add images " }, files), el("label", { text: "or a folder " }, folder));
      const thumbs = el("div", { class: "thumbs" });
      for (const name of c.examples) {
        const url = withToken(P() + "/images/" + encodeURIComponent(c.name) + "/" + name.split("/").map(encodeURIComponent).join("/"));
        const small = url + (url.includes("?") ? "&" : "?") + "thumb=128";
        const key = c.name + "/" + name;
        const t = el("div", { class: "thumb" + (state.flagged.has(key) ? " flagged" : ""), dataset: { key }, title: name },
          el("a", { href: url, target: "_blank", rel: "noopener" }, el("img", { src: small, alt: name, loading: "lazy" })),
          el("button", { class: "remove", type: "button", title: "remove " + name, text: "×",
            onclick: () => guarded(async () => { state.project = await api("DELETE", P() + "/images/" + encodeURIComponent(c.name) + "/" + name.split("/").map(encodeURIComponent).join("/")); renderClasses(); }) }));
        thumbs.append(t);
      }
      if (c.count > c.examples.length) thumbs.append(el("span", { class: "muted", text: "... and " + (c.count - c.examples.length) + " more" }));
      card.append(thumbs);
      card.addEventListener("dragover", (e) => { e.preventDefault(); card.classList.add("dragover"); });
      card.addEventListener("dragleave", () => card.classList.remove("dragover"));
      card.addEventListener("drop", async (e) => {
        e.preventDefault();
        card.classList.remove("dragover");
        const dropped = await droppedFiles(e.dataTransfer);
        uploadImages(c.name, dropped.map((d) => d.file));
      });
    } else {
      const area = el("textarea", { rows: "2", class: "new-texts", placeholder: "Type texts for " + c.name + ", one per line" });
      const add = el("button", { type: "button", class: "add-texts-button", text: "Add",
        onclick: () => guarded(async () => {
          const texts = area.value.split("\n").map((t) => t.trim()).filter(Boolean);
          if (!texts.length) throw new Error("type at least one text");
          const r = await api("POST", P() + "/texts", { label: c.name, texts });
          state.project = r.project; renderClasses();
          $("upload-status").textContent = "added " + r.added + " text(s) to " + c.name;
        }) });
      card.append(el("div", { class: "add-texts" }, area, add));
      const list = el("ul", { class: "texts" });
      for (const ex of c.examples) {
        list.append(el("li", { class: state.flagged.has("text:" + ex.text) ? "flagged" : "", dataset: { index: ex.index } },
          el("span", { class: "text", text: ex.text }),
          el("button", { class: "remove", type: "button", title: "remove this text", text: "×",
            onclick: () => guarded(async () => { state.project = await api("DELETE", P() + "/texts/" + ex.index, { text: ex.text }); renderClasses(); }) })));
      }
      if (c.count > c.examples.length) list.append(el("li", { class: "muted", text: "... and " + (c.count - c.examples.length) + " more" }));
      card.append(list);
    }
    head.append(el("button", { type: "button", class: "danger remove-class", text: "Remove class",
      onclick: () => guarded(async () => {
        if (!confirm("Remove the class " + c.name + " and its " + c.count + " example(s)?")) return;
        state.project = await api("DELETE", P() + "/classes/" + encodeURIComponent(c.name)); renderClasses();
      }) }));
    box.append(card);
  }
}

async function droppedFiles(dt) {
  // Files and whole folders: folders are read entry by entry (webkitGetAsEntry).
  const out = [];
  const entries = [...dt.items].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (!entries.some(Boolean)) return [...dt.files].map((file) => ({ file, path: file.name }));
  async function walk(entry, prefix) {
    if (!entry || entry.name.startsWith(".")) return;
    if (entry.isFile) {
      out.push({ file: await new Promise((ok, ko) => entry.file(ok, ko)), path: prefix + entry.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((ok, ko) => reader.readEntries(ok, ko));
        if (!batch.length) break;
        for (const child of batch) await walk(child, prefix + entry.name + "/");
      }
    }
  }
  for (const entry of entries) await walk(entry, "");
  return out;
}

async function uploadImages(cls, files) {
  files = files.filter((f) => !f.name.startsWith("."));
  if (!files.length) return;
  // A large folder goes in several requests, each well under the studio's limits.
  const limits = (state.info && state.info.limits) || { max_upload_mb: 200, max_files: 2000 };
  const maxBytes = limits.max_upload_mb * 1024 * 1024 * 0.8, maxFiles = Math.min(200, limits.max_files);
  const batches = [];
  let batch = [], size = 0;
  for (const f of files) {
    if (batch.length && (batch.length >= maxFiles || size + f.size > maxBytes)) { batches.push(batch); batch = []; size = 0; }
    batch.push(f); size += f.size;
  }
  batches.push(batch);
  await guarded(async () => {
    let added = 0, sent = 0;
    for (const part of batches) {
      const form = new FormData();
      form.append("class", cls);
      for (const f of part) form.append("files", f, f.name);
      sent += part.length;
      $("upload-status").textContent = "uploading " + sent + " of " + files.length + " ...";
      const r = await api("POST", P() + "/images", form);
      added += r.added;
      state.project = r.project;
    }
    $("upload-status").textContent = "added " + added + " image(s) to " + cls;
    renderClasses();
  });
}

async function uploadZip(file) {
  const form = new FormData();
  form.append("files", file, file.name);
  $("upload-status").textContent = "uploading " + file.name + " ...";
  const r = await api("POST", P() + "/images", form);
  state.project = r.project; renderClasses();
  $("upload-status").textContent = "added " + r.added + " image(s) from " + file.name;
}

async function uploadTable(file) {
  const form = new FormData();
  form.append("file", file, file.name);
  const r = await api("POST", P() + "/texts", form);
  state.project = r.project; renderClasses();
  $("upload-status").textContent = "added " + r.added + " text(s) from " + file.name +
    (r.skipped_count ? "; " + r.skipped_count + " row(s) skipped (empty text or label)" : "");
}

async function uploadDataset(items) {
  // A folder of class folders: top/class/x.jpg or class/x.jpg, one upload per class.
  const groups = new Map();
  for (const { file, path } of items) {
    const parts = path.split("/").filter(Boolean);
    if (parts.length < 2 || parts.some((s) => s.startsWith("."))) continue;
    const cls = parts.length >= 3 ? parts[parts.length - 2] : parts[0];
    if (!groups.has(cls)) groups.set(cls, []);
    groups.get(cls).push(file);
  }
  if (!groups.size) return showError("no class folders found: choose a folder holding one sub-folder per class");
  for (const [cls, files] of groups) await uploadImages(cls, files);
}

// ------------------------------------------------------------------ check

async function runCheck() {
  $("check-result").replaceChildren(el("p", { class: "muted", text: "checking ..." }));
  const report = await api("GET", P() + "/check");
  state.flagged.clear();
  const box = $("check-result");
  box.replaceChildren();
  for (const [name, s] of Object.entries(report.splits || {})) {
    const per = Object.entries(s.per_class || {}).map(([c, n]) => c + " " + n).join(", ");
    box.append(el("p", { class: "split", text: name + ": " + s.items + " example(s) (" + per + ")" }));
  }
  if (!report.findings.length) box.append(el("p", { class: "finding ok", text: "No problems found." }));
  for (const f of report.findings) {
    const div = el("div", { class: "finding", dataset: { kind: f.kind, severity: f.severity } },
      el("span", { class: "sev sev-" + f.severity, text: f.severity }), el("span", { class: "message", text: f.message }));
    if (f.items.length) {
      const ul = el("ul");
      for (const item of f.items.slice(0, 20)) {
        const li = el("li");
        if (item.links && item.links.length) {
          item.links.forEach((link, i) => {
            state.flagged.add(link.class + "/" + link.name);
            if (i) li.append(" = ");
            li.append(el("a", { class: "item-link", text: link.class + "/" + link.name, onclick: () => showItem(link.class + "/" + link.name) }));
          });
        } else if (state.project.modality === "text" && f.kind !== "empty-class" && f.kind !== "single-class") {
          item.text.split(" = ").forEach((t) => state.flagged.add("text:" + unquote(t)));
          li.append(el("a", { class: "item-link", text: item.text, onclick: () => showText(item.text) }));
        } else {
          li.append(item.text);
        }
        ul.append(li);
      }
      if (f.items.length > 20) ul.append(el("li", { class: "muted", text: "... and " + (f.items.length - 20) + " more" }));
      div.append(ul);
    }
    box.append(div);
  }
  renderClasses();
}

function unquote(t) {
  t = t.trim().replace(/ \([^)]*\)$/, "");
  if (t.length > 1 && (t[0] === "'" || t[0] === '"') && t[t.length - 1] === t[0]) t = t.slice(1, -1);
  return t;
}

function showItem(key) {
  const t = document.querySelector('.thumb[data-key="' + CSS.escape(key) + '"]');
  if (t) { t.scrollIntoView({ block: "center" }); t.classList.add("flagged"); }
}

function showText(text) {
  const wanted = text.split(" = ").map(unquote);
  for (const li of document.querySelectorAll(".texts li")) {
    const span = li.querySelector(".text");
    if (span && wanted.includes(span.textContent)) { li.classList.add("flagged"); li.scrollIntoView({ block: "center" }); }
  }
}

// ------------------------------------------------------------------ training

const STATE_WORDS = {
  queued: "queued", running: "training", finished: "finished", failed: "failed",
  cancelled: "cancelled", cut: "cut: the studio stopped during this training",
};

function pct(x) { return x == null ? "-" : (x * 100).toFixed(1) + "%"; }

function renderRuns() {
  const box = $("runs");
  box.replaceChildren();
  const runs = state.project.runs;
  if (!runs.length) box.append(el("p", { class: "muted", text: "No training yet." }));
  for (const r of runs) {
    const row = el("div", { class: "run" + (state.run === r.id ? " selected" : ""), dataset: { id: r.id, state: r.state } },
      el("span", { class: "rid", text: r.id }),
      el("span", { class: "state", text: STATE_WORDS[r.state] + (r.state === "queued" && r.position ? " (" + (r.position === 1 ? "next" : "number " + r.position) + " in the queue)" : "") }));
    if (r.metrics) row.append(el("span", { class: "accuracy", text: "accuracy " + pct(r.metrics.accuracy) }),
      el("span", { class: "f1", text: "macro F1 " + pct(r.metrics.macro_f1) }));
    const act = (label, cls, fn) => row.append(el("button", { type: "button", class: cls, text: label, onclick: () => guarded(fn) }));
    act("Show", "show", () => selectRun(r.id));
    if (r.state === "queued" || r.state === "running") act("Cancel", "cancel", async () => { state.project = await api("POST", P() + "/runs/" + r.id + "/cancel"); renderRuns(); });
    if (r.resumable) act("Resume", "resume", async () => { state.project = await api("POST", P() + "/runs/" + r.id + "/resume"); selectRun(r.id); });
    if (r.message) row.append(el("span", { class: "note", text: r.message + (r.state === "cut" && r.resumable ? ". Resume continues it from its last checkpoint (headstart train --resume)." : "") }));
    box.append(row);
  }
}

async function train() {
  const budget = $("budget").value.trim();
  const body = {};
  if (!$("budget-field").hidden && budget) body.budget_minutes = Number(budget);
  const r = await api("POST", P() + "/runs", body);
  state.project = r.project;
  renderRuns();
  selectRun(r.run.id);
  scheduleRefresh();
}

function closeEvents() {
  if (state.source) { state.source.close(); state.source = null; }
}

function selectRun(rid) {
  state.run = rid;
  renderRuns();
  const run = state.project.runs.find((r) => r.id === rid);
  $("live").hidden = false;
  $("live-run").textContent = rid;
  $("live-state").textContent = run ? STATE_WORDS[run.state] : "";
  $("log").textContent = "";
  closeEvents();
  showModel(run);
  const source = new EventSource(withToken(P() + "/runs/" + rid + "/events"));
  state.source = source;
  // Each connection (a reconnect too, after a restart of the studio) sends the output from its start.
  source.onopen = () => { $("log").textContent = ""; };
  const pid = state.project.id;
  source.addEventListener("log", (e) => {
    const log = $("log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent += JSON.parse(e.data) + "\n";
    if (atEnd) log.scrollTop = log.scrollHeight;
  });
  source.addEventListener("state", (e) => {
    const r = JSON.parse(e.data);
    $("live-state").textContent = STATE_WORDS[r.state] + (r.state === "queued" && r.position ? " (" + r.position + " in the queue)" : "");
    document.body.dataset.runState = r.state;
  });
  source.addEventListener("end", () => {
    source.close();
    loadInfo().catch(() => {});
    if (state.source === source) state.source = null;
    if (state.project && state.project.id === pid) guarded(() => openProject(pid, true).then(() => showModel(state.project.runs.find((x) => x.id === rid))));
  });
  source.onerror = () => { /* the browser reconnects on its own */ };
}

function showModel(run) {
  const panel = $("model-panel");
  if (!run || run.state !== "finished") { panel.hidden = true; return; }
  panel.hidden = false;
  if ($("model-run").textContent !== run.id) {
    $("try-results").replaceChildren();
    $("export-result").textContent = run.export ? exportText(run.export) : "";
    $("try-preview").hidden = true;
  }
  $("model-run").textContent = run.id;
  const m = run.metrics || {};
  $("metrics").replaceChildren(
    "Validation accuracy ", el("span", { class: "big", id: "accuracy", text: pct(m.accuracy) }),
    ", macro F1 ", el("span", { class: "big", text: pct(m.macro_f1) }),
    " on " + (m.n == null ? "?" : m.n) + " held-out example(s).");
  const base = P() + "/runs/" + run.id;
  const report = withToken(base + "/files/report.html");
  if (run.has_report && $("report-frame").dataset.src !== report) { $("report-frame").src = report; $("report-frame").dataset.src = report; }
  $("report-link").href = report;
  $("download").href = withToken(base + "/download");
  $("download-onnx").href = withToken(base + "/download?which=onnx");
  $("download-onnx").hidden = !(run.export && run.export.passed);
}

function exportText(e) {
  return (e.passed ? "Exported to ONNX; parity passed: " : "Export failed: ") + e.summary;
}

function scheduleRefresh() {
  clearTimeout(state.timer);
  const busy = state.project && state.project.runs.some((r) => r.state === "queued" || r.state === "running");
  state.timer = setTimeout(async () => {
    await loadInfo().catch(() => {});
    if (busy && state.project) {
      const p = await api("GET", P()).catch(() => null);
      if (p && state.project && p.id === state.project.id) { state.project = p; renderRuns(); }
    }
    scheduleRefresh();
  }, busy ? 1500 : 5000);
}

async function loadInfo() {
  state.info = await api("GET", "/api/info");
  $("budget-field").hidden = !state.info.time_budget;
  const q = state.info.queue;
  const name = (id) => (state.projects.find((p) => p.id === id) || { name: id }).name;
  $("queue").textContent = (q.running ? "training: " + name(q.running[0]) : "no training running") +
    (q.queued.length ? "; " + q.queued.length + " queued" : "");
}

// ------------------------------------------------------------------ try, export

function renderResults(result) {
  const box = $("try-results");
  box.replaceChildren();
  for (const r of result.results) {
    if (r.unknown && r.unknown.fired) {
      box.append(el("p", { class: "label", text: "Unknown: unlike the training data (score " + r.unknown.score.toFixed(3) +
        " over the threshold " + r.unknown.threshold.toFixed(3) + "). The closest labels:" }));
    }
    for (const p of r.predictions) {
      box.append(el("div", { class: "row" }, el("span", { class: "label", text: p.label }),
        el("span", { class: "score", text: (p.score * 100).toFixed(1) + "%" }),
        el("div", { class: "bar-box" }, el("div", { class: "bar", style: "width:" + (p.score * 100).toFixed(1) + "%" }))));
    }
  }
  box.append(el("p", { class: "muted", text: result.calibrated ? "Scores are calibrated on the validation set (temperature scaling)." : "Scores are the model's probabilities (too few validation examples to calibrate them)." }));
}

async function classifyImage(blob, name) {
  if (!state.run) return;
  const preview = $("try-preview");
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  const form = new FormData();
  form.append("files", blob, name || "image.png");
  renderResults(await api("POST", P() + "/runs/" + state.run + "/predict?top_k=3", form));
}

async function startWebcam() {
  const stream = await navigator.mediaDevices.getUserMedia({ video: true });
  $("video").srcObject = stream;
  $("webcam-box").hidden = false;
}

async function snap() {
  const video = $("video");
  const canvas = el("canvas");
  canvas.width = video.videoWidth; canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((ok) => canvas.toBlob(ok, "image/png"));
  await classifyImage(blob, "webcam.png");
}

// ------------------------------------------------------------------ wiring

function wire() {
  $("new-project").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(async () => {
      const p = await api("POST", "/api/projects", { name: $("new-name").value, modality: $("new-modality").value });
      $("new-name").value = "";
      await openProject(p.id);
    });
  });
  $("rename").addEventListener("click", () => guarded(async () => {
    const name = prompt("New name of the project", state.project.name);
    if (name == null) return;
    state.project = await api("PATCH", P(), { name });
    await loadProjects(); renderProject();
  }));
  $("delete").addEventListener("click", () => guarded(async () => {
    if (!confirm("Delete the project " + state.project.name + ", its data and its runs? This cannot be undone.")) return;
    await api("DELETE", P());
    closeEvents();
    state.project = null; state.run = null;
    $("project").hidden = true; $("welcome").hidden = false;
    await loadProjects();
  }));
  $("add-class-form").addEventListener("submit", (e) => {
    e.preventDefault();
    guarded(async () => {
      state.project = await api("POST", P() + "/classes", { name: $("new-class").value });
      $("new-class").value = "";
      renderClasses();
    });
  });
  $("zip-file").addEventListener("change", () => guarded(async () => {
    const file = $("zip-file").files[0];
    try { if (file) await uploadZip(file); } finally { $("zip-file").value = ""; }
  }));
  // The whole project's drop zone: a zip or a folder of class folders (images), a table (texts).
  const bulk = $("bulk");
  bulk.addEventListener("dragover", (e) => { e.preventDefault(); bulk.classList.add("dragover"); });
  bulk.addEventListener("dragleave", () => bulk.classList.remove("dragover"));
  bulk.addEventListener("drop", async (e) => {
    e.preventDefault();
    bulk.classList.remove("dragover");
    const items = await droppedFiles(e.dataTransfer);
    if (!items.length) return;
    if (state.project.modality === "text") guarded(() => uploadTable(items[0].file));
    else if (items.length === 1 && items[0].file.name.toLowerCase().endsWith(".zip")) guarded(() => uploadZip(items[0].file));
    else uploadDataset(items);
  });
  $("dataset-folder").addEventListener("change", () => {
    const items = [...$("dataset-folder").files].map((file) => ({ file, path: file.webkitRelativePath || file.name }));
    uploadDataset(items).then(() => ($("dataset-folder").value = ""));
  });
  $("table-file").addEventListener("change", () => guarded(async () => {
    const file = $("table-file").files[0];
    try { if (file) await uploadTable(file); } finally { $("table-file").value = ""; }
  }));
  $("check").addEventListener("click", () => guarded(runCheck));
  $("train").addEventListener("click", () => guarded(train));
  $("try-file").addEventListener("change", () => guarded(async () => {
    const file = $("try-file").files[0];
    if (file) await classifyImage(file, file.name);
    $("try-file").value = "";
  }));
  const drop = $("try-drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragover"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragover"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("dragover");
    const file = e.dataTransfer.files[0];
    if (file) guarded(() => classifyImage(file, file.name));
  });
  document.addEventListener("paste", (e) => {
    if (!state.project || state.project.modality !== "image" || $("model-panel").hidden) return;
    const item = [...(e.clipboardData ? e.clipboardData.items : [])].find((i) => i.type.startsWith("image/"));
    if (item) guarded(() => classifyImage(item.getAsFile(), "pasted.png"));
  });
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    $("webcam").hidden = false;
    $("webcam").addEventListener("click", () => guarded(startWebcam));
    $("snap").addEventListener("click", () => guarded(snap));
  }
  $("try-go").addEventListener("click", () => guarded(async () => {
    const text = $("try-text").value;
    if (!text.trim()) throw new Error("type a text to classify");
    renderResults(await api("POST", P() + "/runs/" + state.run + "/predict?top_k=3", { texts: [text] }));
  }));
  $("export").addEventListener("click", () => guarded(async () => {
    $("export").disabled = true;
    $("export-result").textContent = "exporting and checking parity ...";
    try {
      const r = await api("POST", P() + "/runs/" + state.run + "/export");
      state.project = r.project;
      $("export-result").textContent = exportText(r.export);
      showModel(state.project.runs.find((x) => x.id === state.run));
    } catch (err) {
      $("export-result").textContent = "";
      throw err;
    } finally { $("export").disabled = false; }
  }));
}

async function start() {
  wire();
  await guarded(async () => {
    await loadInfo();
    await loadProjects();
  });
  scheduleRefresh();
  document.body.dataset.ready = "1";
}

start();
