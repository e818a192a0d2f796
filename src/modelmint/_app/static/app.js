// modelmint web app: plain JavaScript over the app's REST API (/openapi.json). No framework, no CDN.
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};
const projectId = document.body.dataset.project;
const task = document.body.dataset.task;
const detection = document.body.dataset.kind === "detection";
const pct = (x) => (x == null ? "–" : (100 * x).toFixed(1) + " %");

function flash(message, kind = "error") {
  const box = $("#flash");
  box.textContent = message;
  box.className = "flash " + kind;
  box.hidden = false;
  if (kind !== "error") setTimeout(() => { box.hidden = true; }, 4000);
}

async function api(method, path, body, raw = false) {
  const opts = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    if (raw) opts.body = body;
    else { opts.body = JSON.stringify(body); opts.headers["Content-Type"] = "application/json"; }
  }
  const reply = await fetch(path, opts);
  if (reply.status === 401) { location.href = "/login"; throw new Error("sign in first"); }
  if (reply.status === 204) return null;
  const data = await reply.json().catch(() => ({ error: reply.statusText }));
  if (!reply.ok) { flash(data.error || reply.statusText); throw new Error(data.error); }
  return data;
}

// --- projects ------------------------------------------------------------------------------
async function projectsPage() {
  const tbody = $("#projects tbody");
  const load = async () => {
    const projects = await api("GET", "/api/projects");
    tbody.replaceChildren(...projects.map((p) => el("tr", { "data-id": p.id },
      el("td", {}, el("a", { href: `/projects/${p.id}/data`, text: p.name })),
      el("td", { text: p.kind === "detection" ? "object detection" : p.task }), el("td", { text: p.items }),
      el("td", { text: p.deployed_version ? `version ${p.deployed_version}` : "–" }),
      el("td", {}, el("a", { href: `/projects/${p.id}/train`, text: "train" })))));
    $("#no-projects").hidden = projects.length > 0;
  };
  $("#new-project").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const choice = $("#project-task").value;
    const p = await api("POST", "/api/projects", choice === "detection"
      ? { name: $("#project-name-input").value, task: "image", kind: "detection" }
      : { name: $("#project-name-input").value, task: choice });
    location.href = `/projects/${p.id}/data`;
  });
  await load();
}

// --- data ----------------------------------------------------------------------------------
function uploadFile(file, onProgress) {
  // XMLHttpRequest, not fetch: it reports upload progress. The body is the file itself.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/projects/${projectId}/uploads?filename=${encodeURIComponent(file.name)}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded, e.total);
    xhr.onload = () => {
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (e) { data = { error: xhr.statusText }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data); else reject(new Error(data.error));
    };
    xhr.onerror = () => reject(new Error("upload failed: connection lost"));
    xhr.send(file);
  });
}

async function dataPage() {
  const status = $("#upload-status");
  const bar = $("#upload-progress");
  const refresh = async () => {
    const p = await api("GET", `/api/projects/${projectId}`);
    $("#counts tbody").replaceChildren(...Object.entries(p.counts).map(([label, n]) =>
      el("tr", {}, el("td", {}, el("a", { href: `/projects/${projectId}/label?label=${encodeURIComponent(label)}`, text: label })),
        el("td", { text: n, class: "num" }))));
    if (p.items) await showCheck();
  };
  const showCheck = async () => {
    const box = $("#check");
    box.textContent = "Checking the data…";
    const c = await api("GET", `/api/projects/${projectId}/check`);
    const parts = [];
    const splits = Object.entries(c.counts || {});
    if (splits.length) {
      parts.push(el("p", { text: `Split: ${c.split}. ` + splits.map(([s, per]) =>
        `${s}: ` + Object.entries(per).map(([k, n]) => `${k} ${n}`).join(", ")).join("; ") }));
    }
    const list = el("ul", { id: "check-findings" });
    for (const w of c.warnings) list.append(el("li", { class: "warning", text: w }));
    for (const i of c.issues) list.append(el("li", { class: i.severity, text: `${i.severity}: ${i.path}: ${i.reason}` }));
    if (!list.children.length) list.append(el("li", { class: "ok", text: "No problems found." }));
    parts.push(list);
    box.replaceChildren(...parts);
    box.className = "";
  };
  const send = async (files) => {
    bar.hidden = false;
    for (const file of files) {
      status.textContent = `Uploading ${file.name}…`;
      try {
        const r = await uploadFile(file, (done, total) => { bar.value = (100 * done) / total; });
        status.textContent = `${file.name}: ${r.added} items added` +
          (r.format ? ` (${r.format.toUpperCase()} annotations)` : "") +
          (r.skipped_count ? `, ${r.skipped_count} files skipped (not ${task} data)` : "");
        if (detection) {
          $("#upload-findings").replaceChildren(...r.findings.map((f) => el("li", { class: "warning", text: f })),
            ...(r.findings_count > r.findings.length ? [el("li", { text: `… and ${r.findings_count - r.findings.length} more` })] : []));
        }
      } catch (err) { flash(err.message); status.textContent = `${file.name}: ${err.message}`; }
    }
    bar.value = 100;
    await refresh();
  };
  const zone = $("#dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); send([...e.dataTransfer.files]); });
  $("#file-input").addEventListener("change", (e) => send([...e.target.files]));
  $("#rename-project").addEventListener("click", async () => {
    const name = prompt("New name", $("#project-name").textContent);
    if (!name) return;
    const p = await api("PATCH", `/api/projects/${projectId}`, { name });
    $("#project-name").textContent = p.name;
  });
  $("#delete-project").addEventListener("click", async () => {
    if (!confirm("Delete this project with its data, jobs, models and deployment? This cannot be undone.")) return;
    await api("DELETE", `/api/projects/${projectId}`);
    location.href = "/";
  });
  await refresh();
}

// --- labeling ------------------------------------------------------------------------------
async function labelPage() {
  const params = new URLSearchParams(location.search);
  const filter = $("#label-filter");
  const grid = $("#items");
  const undoStack = [];
  let selected = null;
  let offset = 0;
  let labels = [];

  const renderButtons = () => {
    $("#label-buttons").replaceChildren(...labels.map((label, i) =>
      el("button", { class: "label-button", "data-label": label, text: `${i + 1}: ${label}`, onclick: () => assign(label) })),
      el("button", { class: "label-button", "data-label": "", text: "0: unlabeled", onclick: () => assign(null) }));
  };
  const tile = (item) => {
    const media = task === "image" ? el("img", { src: item.url, loading: "lazy", alt: item.original })
      : task === "sound" ? el("audio", { src: item.url, controls: "" }) : el("p", { class: "text-item", text: "…" });
    if (task === "text") fetch(item.url).then((r) => r.text()).then((t) => { media.textContent = t.slice(0, 280); });
    const node = el("figure", { class: "item", tabindex: "0", "data-id": item.id, "data-label": item.label || "" },
      media, el("figcaption", {}, el("span", { class: "item-label", text: item.label || "unlabeled" }),
        el("small", { class: "muted", text: " " + item.original })));
    node.addEventListener("click", () => select(node));
    return node;
  };
  const select = (node) => {
    if (selected) selected.classList.remove("selected");
    selected = node;
    node.classList.add("selected");
    node.focus();
  };
  const setLabel = async (id, label) => {
    const item = await api("PATCH", `/api/projects/${projectId}/items/${id}`, { label });
    const node = grid.querySelector(`[data-id="${id}"]`);
    if (node) {
      node.dataset.label = item.label || "";
      node.querySelector(".item-label").textContent = item.label || "unlabeled";
      node.classList.add("changed");
    }
    return item;
  };
  const assign = async (label) => {
    if (!selected) { flash("Select an item first (click it).", "info"); return; }
    const before = selected.dataset.label || null;
    if (before === label) return;
    await setLabel(selected.dataset.id, label);
    undoStack.push({ id: selected.dataset.id, label: before });
    $("#undo").disabled = false;
    flash(`Item ${selected.dataset.id} → ${label || "unlabeled"}`, "info");
    const next = selected.nextElementSibling;
    if (next) select(next);
  };
  const undo = async () => {
    const last = undoStack.pop();
    if (!last) return;
    await setLabel(last.id, last.label);
    $("#undo").disabled = undoStack.length === 0;
    flash(`Undone: item ${last.id} is ${last.label || "unlabeled"} again`, "info");
  };
  const load = async (append) => {
    if (!append) offset = 0;
    const q = filter.value ? `&label=${encodeURIComponent(filter.value)}` : "";
    const r = await api("GET", `/api/projects/${projectId}/items?offset=${offset}&limit=100${q}`);
    const tiles = r.items.map(tile);
    if (append) grid.append(...tiles); else grid.replaceChildren(...tiles);
    offset += r.items.length;
    $("#more-items").hidden = offset >= r.total;
    $("#items-count").textContent = `${offset} of ${r.total} shown`;
    labels = Object.keys(r.counts).filter((l) => l !== "unlabeled").sort();
    const current = filter.value;
    filter.replaceChildren(el("option", { value: "", text: "all items" }),
      ...Object.entries(r.counts).map(([l, n]) => el("option", { value: l, text: `${l} (${n})` })));
    filter.value = current;
    renderButtons();
  };
  filter.addEventListener("change", () => load(false));
  $("#more-items").addEventListener("click", () => load(true));
  $("#undo").addEventListener("click", undo);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); return; }
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    if (e.key === "0") assign(null);
    else if (/^[1-9]$/.test(e.key) && labels[Number(e.key) - 1] !== undefined) assign(labels[Number(e.key) - 1]);
    else if (e.key === "ArrowRight" && selected && selected.nextElementSibling) select(selected.nextElementSibling);
    else if (e.key === "ArrowLeft" && selected && selected.previousElementSibling) select(selected.previousElementSibling);
  });
  if (params.get("label")) filter.append(el("option", { value: params.get("label") }));
  filter.value = params.get("label") || "";
  await load(false);
}
// The model pages (train, evaluate, deploy) and the page dispatcher are in model.js.
