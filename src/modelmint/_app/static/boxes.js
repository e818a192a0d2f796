// modelmint web app: boxes on images — the detection labelling page and the drawing of a
// detector's answer in "try it". Plain canvas, no library. Boxes are kept in pixels of the
// upright image (what the API stores); the canvas shows the image scaled to fit.
"use strict";

// The same ten colours as the .swatch.cN classes of app.css (inline styles are refused by CSP).
const BOX_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6",
  "#9a6324", "#800000", "#469990"];
const HANDLE = 7; // px on screen: how near a corner counts as grabbing it
const colourOf = (classes, label) => BOX_COLOURS[Math.max(0, classes.indexOf(label)) % BOX_COLOURS.length];

function loadImage(url) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load the image ${url}`));
    img.src = url;
  });
}

// Fit the image into the box it is given (small images are enlarged, up to 4x) and draw it.
function drawImageScaled(canvas, img, maxWidth, maxHeight) {
  const scale = Math.min(4, maxWidth / img.naturalWidth, maxHeight / img.naturalHeight);
  canvas.width = Math.round(img.naturalWidth * scale);
  canvas.height = Math.round(img.naturalHeight * scale);
  canvas.dataset.scale = String(scale);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  return { ctx, scale };
}

function strokeBox(ctx, box, scale, colour, caption, thick) {
  const [x, y, w, h] = [box.x1 * scale, box.y1 * scale, (box.x2 - box.x1) * scale, (box.y2 - box.y1) * scale];
  ctx.lineWidth = thick ? 3 : 2;
  ctx.strokeStyle = colour;
  ctx.strokeRect(x, y, w, h);
  if (caption) {
    ctx.font = "13px system-ui, sans-serif";
    const width = ctx.measureText(caption).width + 6;
    const top = y >= 17 ? y - 17 : y;
    ctx.fillStyle = colour;
    ctx.fillRect(x, top, width, 17);
    ctx.fillStyle = "#fff";
    ctx.fillText(caption, x + 3, top + 13);
  }
}

// --- "try it": the detector's boxes on the picture -------------------------------------------
async function drawDetections(canvas, file, boxes) {
  const img = await loadImage(URL.createObjectURL(file));
  const { ctx, scale } = drawImageScaled(canvas, img, Math.min(640, canvas.parentElement.clientWidth - 4), 640);
  const labels = [...new Set(boxes.map((b) => b.label))].sort();
  for (const b of boxes) strokeBox(ctx, b, scale, colourOf(labels, b.label), `${b.label} ${b.score.toFixed(2)}`, false);
  canvas.hidden = false;
  canvas.dataset.boxes = String(boxes.length);
}

// --- the labelling page ------------------------------------------------------------------------
async function boxesPage() {
  const canvas = $("#box-canvas");
  const state = { images: [], index: 0, current: null, img: null, classes: [], active: 0,
    selected: -1, undo: [], dirty: false, drag: null, scale: 1 };

  const toImage = (ev) => {
    const rect = canvas.getBoundingClientRect();
    const s = state.scale * (rect.width / canvas.width);
    const clamp = (v, hi) => Math.min(Math.max(v, 0), hi);
    return { x: clamp((ev.clientX - rect.left) / s, state.current.width), y: clamp((ev.clientY - rect.top) / s, state.current.height), s };
  };
  const boxes = () => state.current.boxes;
  const remember = () => { state.undo.push(JSON.stringify(boxes())); $("#undo-box").disabled = false; };
  const changed = () => { state.dirty = true; $("#save-state").textContent = "unsaved changes"; render(); };

  const render = () => {
    if (!state.current) return;
    const { ctx, scale } = drawImageScaled(canvas, state.img, Math.min(900, canvas.parentElement.clientWidth - 4),
      Math.max(240, window.innerHeight * 0.7));
    state.scale = scale;
    boxes().forEach((b, i) => strokeBox(ctx, b, scale, colourOf(state.classes, b.label), b.label, i === state.selected));
    const sel = boxes()[state.selected];
    if (sel) {
      ctx.fillStyle = "#fff";
      for (const [x, y] of corners(sel)) ctx.fillRect(x * scale - 4, y * scale - 4, 8, 8);
    }
    if (state.drag && state.drag.mode === "draw" && state.drag.box) {
      ctx.setLineDash([5, 4]);
      strokeBox(ctx, state.drag.box, scale, colourOf(state.classes, state.classes[state.active]), "", false);
      ctx.setLineDash([]);
    }
    canvas.dataset.boxes = String(boxes().length);
    $("#box-list").replaceChildren(...boxes().map((b, i) => el("li", {
      class: i === state.selected ? "active" : "", onclick: () => { state.selected = i; render(); },
      text: `${b.label} (${Math.round(b.x1)}, ${Math.round(b.y1)}) – (${Math.round(b.x2)}, ${Math.round(b.y2)})` })));
    renderClasses();
  };
  const renderClasses = () => {
    $("#class-list").replaceChildren(...state.classes.map((c, i) => el("li", {
      class: i === state.active ? "active" : "", "data-class": c, onclick: () => pickClass(i) },
    el("span", { class: `swatch c${i % BOX_COLOURS.length}` }), `${i < 9 ? i + 1 + ": " : ""}${c}`)));
  };
  const corners = (b) => [[b.x1, b.y1], [b.x2, b.y1], [b.x1, b.y2], [b.x2, b.y2]];
  const pickClass = (i) => {
    if (i >= state.classes.length) return;
    state.active = i;
    const sel = boxes()[state.selected];
    if (sel && sel.label !== state.classes[i]) { remember(); sel.label = state.classes[i]; changed(); }
    render();
    canvas.focus();
  };

  // --- loading and saving ----------------------------------------------------------------
  const listImages = async () => {
    const filter = $("#image-filter").value;
    const all = [];
    for (let offset = 0; ; offset += 1000) {
      const q = `offset=${offset}&limit=1000` + (filter ? `&label=${filter}` : "");
      const r = await api("GET", `/api/projects/${projectId}/items?${q}`);
      all.push(...r.items);
      if (all.length >= r.total || !r.items.length) break;
    }
    state.images = all;
    $("#no-images").hidden = all.length > 0;
    canvas.hidden = all.length === 0;
  };
  const show = async (index) => {
    if (!state.images.length) return;
    state.index = Math.min(Math.max(index, 0), state.images.length - 1);
    const item = state.images[state.index];
    const data = await api("GET", `/api/projects/${projectId}/images/${item.id}/boxes`);
    state.img = await loadImage(data.url);
    state.current = data;
    state.classes = data.classes;
    state.active = Math.min(state.active, Math.max(0, state.classes.length - 1));
    state.selected = -1; state.undo = []; state.dirty = false;
    $("#undo-box").disabled = true;
    $("#image-position").textContent = `${state.index + 1} / ${state.images.length}: ${item.original}`;
    $("#save-state").textContent = data.labelled ? "labelled" : "not labelled yet";
    canvas.dataset.image = String(item.id);
    render();
  };
  const save = async () => {
    const c = state.current;
    if (!c) return;
    const body = { boxes: c.boxes.map((b) => ({ label: b.label, x1: b.x1, y1: b.y1, x2: b.x2, y2: b.y2 })) };
    const saved = await api("PUT", `/api/projects/${projectId}/images/${c.image}/boxes`, body);
    state.dirty = false;
    c.labelled = true;
    $("#save-state").textContent = `saved (${saved.boxes.length} boxes)`;
    canvas.dataset.saved = String(Number(canvas.dataset.saved || 0) + 1);
  };
  const go = async (step) => {
    if (!state.current) return;
    await save();
    if (state.index + step >= 0 && state.index + step < state.images.length) await show(state.index + step);
  };

  // --- mouse: draw, select, move, resize ---------------------------------------------------
  canvas.addEventListener("mousedown", (ev) => {
    if (!state.current) return;
    ev.preventDefault();
    canvas.focus();
    const p = toImage(ev);
    const near = HANDLE / p.s;
    const sel = boxes()[state.selected];
    const corner = sel ? corners(sel).findIndex(([x, y]) => Math.abs(x - p.x) <= near && Math.abs(y - p.y) <= near) : -1;
    const before = JSON.stringify(boxes());
    if (corner >= 0) { state.drag = { mode: "resize", corner, before }; return; }
    const hit = boxes().map((b, i) => [b, i]).reverse().find(([b]) => p.x >= b.x1 && p.x <= b.x2 && p.y >= b.y1 && p.y <= b.y2);
    if (hit) {
      state.selected = hit[1];
      state.drag = { mode: "move", start: p, origin: { ...hit[0] }, before };
    } else {
      state.selected = -1;
      state.drag = { mode: "draw", start: p, box: null, before };
    }
    render();
  });
  window.addEventListener("mousemove", (ev) => {
    const d = state.drag;
    if (!d) return;
    const p = toImage(ev);
    const W = state.current.width, H = state.current.height;
    if (d.mode === "draw") {
      d.box = { x1: Math.min(d.start.x, p.x), y1: Math.min(d.start.y, p.y), x2: Math.max(d.start.x, p.x), y2: Math.max(d.start.y, p.y) };
    } else if (d.mode === "move") {
      const b = boxes()[state.selected], o = d.origin;
      const dx = Math.min(Math.max(p.x - d.start.x, -o.x1), W - o.x2);
      const dy = Math.min(Math.max(p.y - d.start.y, -o.y1), H - o.y2);
      Object.assign(b, { x1: o.x1 + dx, x2: o.x2 + dx, y1: o.y1 + dy, y2: o.y2 + dy });
    } else {
      const b = boxes()[state.selected];
      if (d.corner === 0 || d.corner === 2) b.x1 = Math.min(p.x, b.x2 - 1); else b.x2 = Math.max(p.x, b.x1 + 1);
      if (d.corner === 0 || d.corner === 1) b.y1 = Math.min(p.y, b.y2 - 1); else b.y2 = Math.max(p.y, b.y1 + 1);
    }
    render();
  });
  window.addEventListener("mouseup", () => {
    const d = state.drag;
    if (!d) return;
    state.drag = null;
    if (d.mode === "draw") {
      const b = d.box;
      if (b && b.x2 - b.x1 >= 2 && b.y2 - b.y1 >= 2) {
        if (!state.classes.length) { flash("Add a class first (the form beside the image)."); render(); return; }
        const round = (v) => Math.round(v * 10) / 10;
        state.undo.push(d.before); $("#undo-box").disabled = false;
        boxes().push({ label: state.classes[state.active], x1: round(b.x1), y1: round(b.y1), x2: round(b.x2), y2: round(b.y2) });
        state.selected = boxes().length - 1;
        changed();
      } else render();
    } else if (JSON.stringify(boxes()) !== d.before) {
      state.undo.push(d.before); $("#undo-box").disabled = false;
      changed();
    }
  });

  // --- keyboard ------------------------------------------------------------------------------
  const undo = () => {
    const last = state.undo.pop();
    if (last === undefined) return;
    state.current.boxes = JSON.parse(last);
    state.selected = -1;
    $("#undo-box").disabled = state.undo.length === 0;
    changed();
  };
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
    if ((e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "z") { e.preventDefault(); undo(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    if (/^[1-9]$/.test(e.key)) pickClass(Number(e.key) - 1);
    else if ((e.key === "Delete" || e.key === "Backspace") && state.selected >= 0) {
      e.preventDefault();
      remember();
      boxes().splice(state.selected, 1);
      state.selected = -1;
      changed();
    } else if (e.key === "Escape") { state.selected = -1; render(); }
    else if (e.key === "n" || e.key === "ArrowRight") { e.preventDefault(); go(1); }
    else if (e.key === "p" || e.key === "ArrowLeft") { e.preventDefault(); go(-1); }
  });
  $("#undo-box").addEventListener("click", undo);
  $("#next-image").addEventListener("click", () => go(1));
  $("#prev-image").addEventListener("click", () => go(-1));
  $("#image-filter").addEventListener("change", async () => { await listImages(); await show(0); });
  $("#new-class").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("#new-class-name");
    state.classes = await api("POST", `/api/projects/${projectId}/classes`, { name: input.value });
    if (state.current) state.current.classes = state.classes;
    state.active = state.classes.indexOf(input.value.trim());
    input.value = "";
    render();
    renderClasses();
    canvas.focus();
  });
  window.addEventListener("beforeunload", (e) => { if (state.dirty) e.preventDefault(); });
  window.addEventListener("resize", render);

  state.classes = await api("GET", `/api/projects/${projectId}/classes`);
  renderClasses();
  const params = new URLSearchParams(location.search);
  if (["labelled", "unlabeled"].includes(params.get("label"))) $("#image-filter").value = params.get("label");
  await listImages();
  await show(0);
  canvas.dataset.ready = "1";
}
