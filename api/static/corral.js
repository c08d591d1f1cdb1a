// Corral's pages: the upload form (errors shown from problem+json) and live progress by polling.
"use strict";

const ACTIVE = new Set(["queued", "running", "cancelling"]);

function problemText(status, body) {
  if (body && typeof body === "object") {
    const lines = [`${body.title || "Error"} (${status}): ${body.detail || ""}`];
    for (const e of body.errors || []) lines.push(`${e.field}: ${e.message}`);
    return lines;
  }
  return [`Error ${status}`];
}

function showProblem(box, lines) {
  box.replaceChildren();
  const strong = document.createElement("strong");
  strong.textContent = lines[0];
  box.append(strong);
  if (lines.length > 1) {
    const list = document.createElement("ul");
    for (const line of lines.slice(1)) {
      const item = document.createElement("li");
      item.textContent = line; // text, never markup: details may quote file names
      list.append(item);
    }
    box.append(list);
  }
  box.hidden = false;
}

function setupUpload(form) {
  const status = document.getElementById("upload-status");
  const errorBox = document.getElementById("upload-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    const params = { method: form.method.value };
    if (form.k.value) params.k = Number(form.k.value); // empty: chosen after training
    else if (form.k_max.value) params.k_max = Number(form.k_max.value);
    if (form.epochs.value) params.epochs = Number(form.epochs.value);
    if (form.time_budget_s.value) params.time_budget_s = Number(form.time_budget_s.value);
    if (form.name.value) params.name = form.name.value;
    const data = new FormData();
    if (form.archive.files.length) data.append("archive", form.archive.files[0]);
    data.append("params", JSON.stringify(params));
    form.querySelector("button").disabled = true;
    status.textContent = "Uploading…";
    try {
      const response = await fetch("/jobs", { method: "POST", body: data });
      const body = await response.json().catch(() => null);
      if (!response.ok) {
        status.textContent = "";
        showProblem(errorBox, problemText(response.status, body));
        return;
      }
      status.textContent = "Queued; opening the job…";
      window.location.assign(`/ui/jobs/${body.id}`);
    } catch (error) {
      status.textContent = "";
      showProblem(errorBox, [`The server could not be reached: ${error}`]);
    } finally {
      form.querySelector("button").disabled = false;
    }
  });
}

function setupRecluster(form) {
  const errorBox = document.getElementById("recluster-error");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    errorBox.hidden = true;
    form.querySelector("button").disabled = true;
    try {
      const response = await fetch(`/jobs/${form.dataset.job}/reclusterings`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ k: Number(form.k.value) }),
      });
      const body = await response.json().catch(() => null);
      if (!response.ok) return showProblem(errorBox, problemText(response.status, body));
      window.location.assign(`/ui/jobs/${body.id}`);
    } catch (error) {
      showProblem(errorBox, [`The server could not be reached: ${error}`]);
    } finally {
      form.querySelector("button").disabled = false;
    }
  });
}

function eta(job) {
  const p = job.progress;
  let seconds;
  if (p.expected_end_at && ACTIVE.has(job.state)) { // a budgeted job's plan
    seconds = Math.max(0, (Date.parse(p.expected_end_at) - Date.now()) / 1000);
  } else {
    if (!job.started_at || !p.epoch || !p.epochs || p.epoch >= p.epochs) return "–";
    const elapsed = (Date.now() - Date.parse(job.started_at)) / 1000;
    seconds = (elapsed / p.epoch) * (p.epochs - p.epoch);
  }
  return seconds >= 90 ? `${(seconds / 60).toFixed(1)} min` : `${Math.round(seconds)} s`;
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = text;
}

function setupJob(section) {
  const id = section.dataset.job;
  const poll = async () => {
    let job;
    try {
      const response = await fetch(`/jobs/${id}`, { headers: { Accept: "application/json" } });
      if (!response.ok) return setTimeout(poll, 3000);
      job = await response.json();
    } catch (error) {
      return setTimeout(poll, 3000);
    }
    const p = job.progress;
    const state = document.getElementById("state");
    state.textContent = job.state;
    state.className = `state state-${job.state}`;
    document.getElementById("bar").value = p.percent || 0;
    setText("stage", p.stage || "–");
    setText("epoch", `${p.epoch || 0} / ${p.epochs || "–"}`);
    setText("loss", p.loss == null ? "–" : p.loss.toFixed(4));
    setText("speed", p.images_per_s == null ? "–" : Math.round(p.images_per_s).toString());
    setText("eta", eta(job));
    if (ACTIVE.has(job.state)) setTimeout(poll, 1000);
    else window.location.reload(); // finished: the server renders the gallery
  };
  if (ACTIVE.has(section.dataset.state)) poll();
}

function setupJobsTable(table) {
  for (const row of table.querySelectorAll("tr[data-job]")) {
    if (!ACTIVE.has(row.dataset.state)) continue;
    const poll = async () => {
      const response = await fetch(`/jobs/${row.dataset.job}`).catch(() => null);
      if (response && response.ok) {
        const job = await response.json();
        const cell = row.querySelector("[data-field=state]");
        cell.textContent = job.state;
        cell.className = `state state-${job.state}`;
        row.querySelector("[data-field=bar]").value = job.progress.percent || 0;
        row.querySelector("[data-field=percent]").textContent = `${Math.round(job.progress.percent || 0)}%`;
        if (!ACTIVE.has(job.state)) return;
      }
      setTimeout(poll, 2000);
    };
    poll();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("upload");
  if (form) setupUpload(form);
  const jobs = document.getElementById("jobs");
  if (jobs) setupJobsTable(jobs);
  const recluster = document.getElementById("recluster");
  if (recluster) setupRecluster(recluster);
  const progress = document.getElementById("progress");
  if (progress) setupJob(progress);
});
