// modelmint web app: the train, evaluate and deploy pages (shared functions are in app.js).
"use strict";

// --- training ------------------------------------------------------------------------------
// A hand-written SVG line chart (a few lines; a chart library would be most of the page weight).
function lineChart(svg, series, yMax) {
  const W = 400, H = 200, P = 28;
  const all = series.flatMap((s) => s.points);
  const n = Math.max(2, all.length ? Math.max(...all.map((p) => p[0])) : 2);
  const top = yMax ?? Math.max(1e-6, ...all.map((p) => p[1]));
  const x = (i) => P + ((W - 2 * P) * (i - 1)) / (n - 1);
  const y = (v) => H - P - ((H - 2 * P) * v) / top;
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs) => { const e = document.createElementNS(ns, tag); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); return e; };
  const parts = [node("line", { x1: P, y1: H - P, x2: W - P, y2: H - P, class: "axis" }),
    node("line", { x1: P, y1: P, x2: P, y2: H - P, class: "axis" })];
  const label = node("text", { x: 2, y: P, class: "tick" }); label.textContent = top.toFixed(2); parts.push(label);
  const zero = node("text", { x: 2, y: H - P, class: "tick" }); zero.textContent = "0"; parts.push(zero);
  const xl = node("text", { x: W - P - 30, y: H - 6, class: "tick" }); xl.textContent = `epoch ${n}`; parts.push(xl);
  if (!all.length) {
    const wait = node("text", { x: W / 2 - 70, y: H / 2, class: "tick" });
    wait.textContent = "waiting for the first epoch…";
    parts.push(wait);
  }
  series.forEach((s, k) => {
    if (!s.points.length) return;
    parts.push(node("polyline", { points: s.points.map((p) => `${x(p[0])},${y(p[1])}`).join(" "), class: `series s${k}` }));
    const t = node("text", { x: W - P - 90, y: P + 14 * k, class: `legend s${k}` }); t.textContent = s.name; parts.push(t);
  });
  svg.replaceChildren(...parts);
}

async function trainPage() {
  let timer = null;
  let currentJob = null;
  const showJob = async (id) => {
    const job = await api("GET", `/api/jobs/${id}`);
    currentJob = job;
    $("#job-panel").hidden = false;
    $("#job-id").textContent = `#${job.id}`;
    $("#job-status").textContent = job.status + (job.version ? ` — version ${job.version}, ${headline(job)}` : "");
    $("#job-status").className = `status ${job.status}`;
    $("#job-error").hidden = !job.error;
    $("#job-error").textContent = job.error || "";
    $("#resume-job").hidden = job.status !== "interrupted";
    $("#start-training").disabled = job.status === "running";
    const epochs = job.epochs.map((r, i) => ({ ...r, n: i + 1 }));
    // Whatever the epochs log: losses in one chart, validation scores (accuracy, mAP) in the other.
    const keys = [...new Set(epochs.flatMap((r) => Object.keys(r).filter((k) => typeof r[k] === "number")))];
    const series = (names) => names.map((k) => ({ name: k.replaceAll("_", " "), points: epochs.filter((r) => typeof r[k] === "number").map((r) => [r.n, r[k]]) }));
    const losses = keys.filter((k) => k.endsWith("loss"));
    lineChart($("#loss-chart"), series(losses.length ? losses : ["train_loss", "val_loss"]));
    const scores = keys.filter((k) => k.startsWith("val_") && !k.endsWith("loss"));
    $("#metric-title").textContent = scores.length ? scores.map((k) => k.replaceAll("_", " ")).join(", ") : "Validation score";
    // The fixed recipe logs epochs; a search reports each trial's validation score per step.
    const acc = epochs.length ? series(scores)
      : job.trial_curves.map((c) => ({ name: `trial ${c.trial}`, points: c.points.map(([step, v]) => [step + 1, v]) }));
    lineChart($("#acc-chart"), acc.slice(0, 5), 1);
    // A finished search whose trials reported no epochs (baselines) has only its leaderboard.
    $("#charts").hidden = job.status !== "running" && !epochs.length && !acc.some((c) => c.points.length);
    renderLeaderboard(job.leaderboard);
    $("#job-log").textContent = job.log_tail.join("\n");
    if (job.status !== "running") { clearInterval(timer); timer = null; await listJobs(); }
  };
  const follow = (id) => {
    clearInterval(timer);
    showJob(id);
    timer = setInterval(() => showJob(id), 2000);
  };
  const listJobs = async () => {
    const jobs = await api("GET", `/api/projects/${projectId}/jobs`);
    $("#jobs tbody").replaceChildren(...jobs.map((j) => el("tr", { "data-id": j.id, class: "clickable", onclick: () => follow(j.id) },
      el("td", { text: `#${j.id}` }), el("td", { text: j.status, class: `status ${j.status}` }),
      el("td", { text: `${j.budget} s` }), el("td", { text: j.version ?? "–" }),
      el("td", { text: detection ? pct(j.map50) : pct(j.val_accuracy) }), el("td", { text: j.created }))));
    return jobs;
  };
  $("#start-job").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const maxTrials = $("#max-trials").value;
    const job = await api("POST", `/api/projects/${projectId}/jobs`,
      { budget: Number($("#budget").value), max_trials: maxTrials ? Number(maxTrials) : null });
    await listJobs();
    follow(job.id);
  });
  $("#resume-job").addEventListener("click", async () => {
    await api("POST", `/api/jobs/${currentJob.id}/resume`);
    follow(currentJob.id);
  });
  if (detection) $("#metric-column").textContent = "Val mAP@0.5";
  const jobs = await listJobs();
  if (jobs.length) follow(jobs[0].id);
}

// A version's or job's headline score: a detector's mAP@0.5, a classifier's accuracy.
function headline(m) {
  return m.map50 != null ? `val mAP@0.5 ${pct(m.map50)}` : `val accuracy ${pct(m.val_accuracy)}`;
}

function renderLeaderboard(board) {
  const box = $("#leaderboard");
  const rows = Array.isArray(board) ? board : (board && (board.trials || board.rows)) || [];
  if (!rows.length) { box.replaceChildren(); return; }
  const cols = Object.keys(rows[0]).filter((k) => typeof rows[0][k] !== "object");
  box.replaceChildren(el("h3", { text: "Search leaderboard" }), el("table", { class: "grid-table", id: "leaderboard-table" },
    el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", { text: c })))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...cols.map((c) => el("td", { text: typeof r[c] === "number" ? +r[c].toFixed(4) : r[c] })))))));
}

// --- evaluation ----------------------------------------------------------------------------
async function evaluatePage() {
  const versions = await api("GET", `/api/projects/${projectId}/versions`);
  const select = $("#version-select");
  $("#no-versions").hidden = versions.length > 0;
  select.replaceChildren(...versions.slice().reverse().map((v) =>
    el("option", { value: v.version, text: `version ${v.version} (${headline(v.metrics)})${v.deployed ? " — deployed" : ""}` })));
  const show = async () => {
    if (!select.value) return;
    const r = await api("GET", `/api/projects/${projectId}/versions/${select.value}/report`);
    $("#full-report").hidden = !r.has_html;
    $("#full-report").href = `/api/projects/${projectId}/versions/${select.value}/report.html`;
    if (detection) { showDetectionMetrics(r.report.evaluation || {}); return; }
    const ev = r.report.evaluation;
    $("#version-summary").textContent = `accuracy ${pct(ev.accuracy)} on ${ev.samples} validation items, macro F1 ${ev.macro_f1.toFixed(3)}`;
    $("#per-class tbody").replaceChildren(...Object.entries(ev.per_class).map(([label, m]) =>
      el("tr", {}, el("td", { text: label }), el("td", { text: m.precision.toFixed(3) }), el("td", { text: m.recall.toFixed(3) }),
        el("td", { text: m.f1.toFixed(3) }), el("td", { text: m.support }))));
    const cm = ev.confusion_matrix;
    $("#confusion").replaceChildren(el("tr", {}, el("th", { text: "" }), ...cm.labels.map((l) => el("th", { text: l }))),
      ...cm.rows_true_cols_predicted.map((row, i) => el("tr", {}, el("th", { text: cm.labels[i] }),
        ...row.map((n, j) => el("td", { text: n, class: i === j ? "diag" : n ? "off" : "" })))));
    $("#misclassified").replaceChildren(...(ev.misclassified.length ? ev.misclassified.map((m) => el("figure", { class: "item" },
      m.item_id != null && task === "image" ? el("img", { src: `/api/projects/${projectId}/items/${m.item_id}/file`, alt: m.file }) : el("span", { text: m.file }),
      el("figcaption", { text: `true ${m.true}, predicted ${m.predicted} (${m.score.toFixed(2)})` }))) : [el("p", { class: "muted", text: "None: every validation item is right." })]));
    $("#profile-section").hidden = !r.profile.length;
    $("#profile").replaceChildren(...r.profile.map((a) => el("li", {},
      el("strong", { text: `[${a.severity || "info"}] ${a.title || a.rule || ""}` }),
      el("div", { text: a.evidence || "" }), el("div", { class: "muted", text: a.action || a.setting || "" }))));
  };
  select.addEventListener("change", show);
  await show();
}

function showDetectionMetrics(ev) {
  $("#classification-report").hidden = true;
  $("#misclassified").parentElement.hidden = true;
  $("#detection-metrics").hidden = false;
  $("#full-report").textContent = "Full report (predictions drawn on the validation images)";
  $("#version-summary").textContent = `${headline(ev)} on ${ev.samples ?? "?"} validation images`;
  const metrics = Object.entries(ev).filter(([, v]) => typeof v === "number");
  $("#metrics-table tbody").replaceChildren(...metrics.map(([k, v]) =>
    el("tr", {}, el("th", { text: k.replaceAll("_", " ") }), el("td", { text: k.startsWith("map") ? pct(v) : +v.toFixed(4) }))));
  const num = (v) => (typeof v === "number" ? +v.toFixed(3) : "–");
  $("#ap-per-class tbody").replaceChildren(...Object.entries(ev.per_class || {}).map(([label, m]) =>
    el("tr", {}, el("td", { text: label }), el("td", { text: num(m.ap50) }), el("td", { text: num(m.ap50_95) }),
      el("td", { text: m.boxes ?? "–" }), el("td", { text: m.detections ?? "–" }))));
}

// --- deploy and try ------------------------------------------------------------------------
async function deployPage() {
  const versions = await api("GET", `/api/projects/${projectId}/versions`);
  $("#deploy-version").replaceChildren(...versions.slice().reverse().map((v) =>
    el("option", { value: v.version, text: `version ${v.version} (${headline(v.metrics)})` })));
  $("#sdk-link").href = `/api/projects/${projectId}/sdk`;
  let timer = null;
  const refresh = async () => {
    const d = await api("GET", `/api/projects/${projectId}/deployment`);
    const states = d.server && d.server.versions.length ? " (" + d.server.versions.map((v) => `v${v.version} ${v.state}`).join(", ") + ")" : "";
    let text = d.deployed_version ? `version ${d.deployed_version} deployed` : "not deployed";
    if (d.progress && d.progress.state === "deploying") text = `deploying version ${d.progress.version}: loading and warming up`;
    if (d.progress && d.progress.state === "failed") text = `deploying version ${d.progress.version} failed: ${d.progress.error}`;
    if (d.deployed_version && d.server && d.server.ready) text += " — ready";
    $("#deploy-status").textContent = text + states;
    $("#snippet-curl").textContent = d.snippets.curl;
    $("#snippet-python").textContent = d.snippets.python;
    // The offline SDK vendors the preprocessing of every kind (image, sound, text).
    $("#sdk-link").classList.toggle("disabled", !d.deployed_version);
    const busy = d.progress && d.progress.state === "deploying";
    if (!busy && timer) { clearInterval(timer); timer = null; }
    return d;
  };
  $("#deploy-button").addEventListener("click", async () => {
    await api("POST", `/api/projects/${projectId}/deploy`, { version: Number($("#deploy-version").value) });
    clearInterval(timer);
    timer = setInterval(refresh, 1000);
    await refresh();
  });
  $("#undeploy-button").addEventListener("click", async () => {
    if (!confirm("Stop serving this project's model?")) return;
    await api("DELETE", `/api/projects/${projectId}/deploy`);
    await refresh();
  });
  const predict = async (body, preview) => {
    const minScore = detection ? $("#try-min-score").value : "";
    const r = await api("POST", `/api/projects/${projectId}/predict?top_k=5` +
      (minScore !== "" ? `&score_threshold=${Number(minScore)}` : ""), body, true);
    if (detection) {
      $("#try-score-column").textContent = "Score";
      await drawDetections($("#try-canvas"), body, r.boxes);
      $("#try-result tbody").replaceChildren(...r.boxes.map((b) => el("tr", {}, el("td", { text: b.label }),
        el("td", { text: `${b.score.toFixed(3)} at (${Math.round(b.x1)}, ${Math.round(b.y1)}) – (${Math.round(b.x2)}, ${Math.round(b.y2)})` }))));
      if (!r.boxes.length) $("#try-result tbody").replaceChildren(el("tr", {}, el("td", { text: "nothing found" }), el("td")));
      return;
    }
    $("#try-preview").replaceChildren(...(preview ? [preview] : []));
    $("#try-result tbody").replaceChildren(...r.top.map((t) =>
      el("tr", {}, el("td", { text: t.label }), el("td", {}, el("meter", { min: 0, max: 1, value: t.probability }), ` ${pct(t.probability)}`))));
  };
  if (task === "text") {
    const input = el("textarea", { id: "try-text", rows: 3, class: "wide", placeholder: "Type a text to classify" });
    $("#try-input").replaceChildren(input, el("button", { id: "try-button", text: "Classify", onclick: () => predict(input.value, null) }));
  } else {
    const input = el("input", { type: "file", id: "try-file", accept: task === "image" ? "image/*" : "audio/*" });
    input.addEventListener("change", async () => {
      const file = input.files[0];
      if (!file) return;
      const preview = task === "image" ? el("img", { src: URL.createObjectURL(file), class: "preview" }) : el("audio", { src: URL.createObjectURL(file), controls: "" });
      await predict(file, preview);
    });
    $("#try-input").replaceChildren(el("label", { text: `Choose ${task === "image" ? "an image" : "a sound file"}: ` }, input));
    if (detection) {
      $("#try-input").append(" ", el("label", { text: "Min score " }, el("input", {
        type: "number", id: "try-min-score", min: 0, max: 1, step: 0.05, placeholder: "model's", title: "Show boxes scoring at least this (empty: the model's own threshold)" })));
    }
  }
  const d = await refresh();
  if (d.progress && d.progress.state === "deploying") timer = setInterval(refresh, 1000);
}

const pages = { projects: projectsPage, data: dataPage, label: labelPage, train: trainPage,
  evaluate: evaluatePage, deploy: deployPage };
// A detection project labels boxes (boxes.js, loaded on its pages only).
if (detection) pages.label = boxesPage;
const run = pages[document.body.dataset.page];
if (run) run().catch((err) => console.error(err));
