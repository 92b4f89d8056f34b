// tag-engine console: actions through the JSON API, live task progress.
"use strict";

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Requested-With": "tag-console" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  let json = null;
  try { json = await response.json(); } catch (_) { /* not JSON */ }
  return { status: response.status, json };
}

function show(place, ok, text) {
  if (!place) return;
  place.textContent = text;
  place.className = place.className.replace(/ ?(ok|error)/g, "") + (ok ? " ok" : " error");
}

function then(where) {
  if (where === "reload") location.reload();
  else if (where) location.href = where;
}

// A failed call shows the API's own words in place.
function explain(reply) {
  const j = reply.json || {};
  return [j.error, j.message].filter(Boolean).join(" · ") || "HTTP " + reply.status;
}

function triggerBody(form) {
  const data = new FormData(form);
  const body = {
    tag_ids: data.getAll("tag_ids").map(Number),
    mode: data.get("mode"),
    priority: data.get("priority"),
  };
  if (data.get("as_of")) body.as_of = data.get("as_of");
  const users = (data.get("user_ids") || "").split(/[\s,]+/).filter(Boolean);
  if (users.length) body.user_ids = users;
  return body;
}

async function submitForm(form, event) {
  event.preventDefault();
  const place = form.querySelector(".result");
  let body;
  if (form.id === "trigger") {
    body = triggerBody(form);
  } else {
    try { body = JSON.parse(form.querySelector("textarea").value); }
    catch (e) { show(place, false, "JSON 无效 / not JSON: " + e.message); return; }
  }
  const reply = await api(form.dataset.method, form.dataset.path, body);
  if (reply.status < 300) { show(place, true, "OK"); then(form.dataset.then); }
  else show(place, false, explain(reply));
}

async function clickAction(button) {
  const place = button.parentElement.querySelector(".result");
  const body = button.dataset.body ? JSON.parse(button.dataset.body) : undefined;
  button.disabled = true;
  const reply = await api(button.dataset.method, button.dataset.path, body);
  button.disabled = false;
  if (reply.status < 300) { show(place, true, "OK"); then(button.dataset.then); }
  else show(place, false, explain(reply));
}

// Bars take their width from data-percent (the page's content policy
// allows no inline style attribute; a style set from a script is fine).
function fillBars() {
  document.querySelectorAll(".bar .fill[data-percent]").forEach(fill => {
    fill.style.width = fill.dataset.percent + "%";
  });
}

// Running tasks' bars follow /api/v1/tasks; a task that ends reloads the page.
async function followTasks() {
  const rows = document.querySelectorAll("tr[data-task]");
  const live = [...rows].filter(r => ["submitted", "running"].includes(r.dataset.status));
  if (!live.length) return;
  const reply = await api("GET", "/api/v1/tasks?limit=100");
  const tasks = (reply.json && reply.json.tasks) || [];
  let ended = false;
  for (const row of live) {
    const task = tasks.find(t => t.task_id === row.dataset.task);
    if (!task) continue;
    if (task.status !== row.dataset.status && task.status !== "running") ended = true;
    const p = task.progress;
    const percent = task.status === "completed" ? 100 : (p ? p.percent : 0);
    row.querySelector(".fill").style.width = percent + "%";
    const eta = p && p.eta_seconds != null ? " · " + p.eta_seconds + " s" : "";
    const part = p && p.partition ? (p.partition.index === 0
      ? (p.partition.spilled ? " · spilling into " : " · into ") + p.partition.count + " partitions"
      : " · partition " + p.partition.index + "/" + p.partition.count) : "";
    row.querySelector(".label").textContent = Math.round(percent) + "% " + (p ? p.stage : task.status) + part + eta;
    row.dataset.status = task.status === "running" ? "running" : row.dataset.status;
  }
  if (ended) { setTimeout(() => location.reload(), 300); return; }
  setTimeout(followTasks, 500);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-path]").forEach(f =>
    f.addEventListener("submit", e => submitForm(f, e)));
  document.querySelectorAll("button.action").forEach(b =>
    b.addEventListener("click", () => clickAction(b)));
  const signin = document.getElementById("signin");
  if (signin) signin.addEventListener("submit", async e => {
    e.preventDefault();
    const reply = await api("POST", "/console/session", { token: signin.token.value });
    if (reply.status < 300) location.href = "/";
    else show(signin.querySelector(".result"), false, explain(reply));
  });
  const signout = document.getElementById("signout");
  if (signout) signout.addEventListener("click", async () => {
    await api("DELETE", "/console/session");
    location.href = "/signin";
  });
  fillBars();
  followTasks();
});
