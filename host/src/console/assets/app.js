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

// A user id as a link to the user's page.
function userItem(user) {
  const li = document.createElement("li");
  const a = document.createElement("a");
  a.href = "/users/" + encodeURIComponent(user);
  a.textContent = user;
  li.append(a);
  return li;
}

// The name being typed at the caret (a token of the expression).
function typedToken(input) {
  const before = input.value.slice(0, input.selectionStart);
  const match = before.match(/"[^"]*$|[^\s()"]*$/);
  return { text: match[0].replace(/^"/, ""), start: before.length - match[0].length };
}

// Tag names matching what is typed, offered below the box; a click puts
// the name in place of the token (quoted when it needs it).
function offerNames(input, suggest, names) {
  suggest.replaceChildren();
  const token = typedToken(input);
  const keyword = /^(and|or|not)$/i.test(token.text);
  if (!token.text || keyword || /^\d+$/.test(token.text)) return;
  const wanted = token.text.toLowerCase();
  for (const name of names.filter(n => n.toLowerCase().includes(wanted)).slice(0, 8)) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name;
    button.addEventListener("click", () => {
      const quoted = /[\s()"]/.test(name) ? JSON.stringify(name) : name;
      const after = input.value.slice(input.selectionStart);
      input.value = input.value.slice(0, token.start) + quoted + " " + after.replace(/^[^\s()]*/, "");
      suggest.replaceChildren();
      input.focus();
      input.dispatchEvent(new Event("input"));
    });
    li.append(button);
    suggest.append(li);
  }
}

// The audience box: the count, the first members and the export links
// follow the expression as it is typed; errors point at the token.
function audienceBox() {
  const form = document.getElementById("audience");
  if (!form) return;
  const input = form.querySelector("#expr");
  const suggest = document.getElementById("suggest");
  const names = [...document.querySelectorAll("#tag-names option")].map(o => o.value);
  const count = document.getElementById("count");
  const error = document.getElementById("expr-error");
  const members = document.getElementById("audience-members");
  const links = document.getElementById("export-links");
  let timer = null, asked = 0;
  async function ask() {
    const expr = input.value.trim();
    const mine = ++asked;
    if (!expr) { count.textContent = "-"; members.replaceChildren(); links.hidden = true; error.textContent = ""; return; }
    const reply = await api("POST", "/api/v1/audiences/query", { expr, limit: 20 });
    if (mine !== asked) return; // a newer question was asked meanwhile
    if (reply.status !== 200) { show(error, false, explain(reply)); count.textContent = "-"; links.hidden = true; return; }
    error.textContent = "";
    count.textContent = reply.json.count;
    members.replaceChildren(...reply.json.members.map(userItem));
    links.querySelectorAll("a.export").forEach(a => {
      a.href = "/api/v1/audiences/query?expr=" + encodeURIComponent(expr) + "&format=" + a.dataset.format;
    });
    links.hidden = false;
  }
  input.addEventListener("input", () => {
    offerNames(input, suggest, names);
    clearTimeout(timer);
    timer = setTimeout(ask, 150);
  });
  form.addEventListener("submit", e => e.preventDefault());
  const save = document.getElementById("save-audience");
  if (save) save.addEventListener("submit", async e => {
    e.preventDefault();
    const name = save.elements.name.value.trim();
    const body = { expr: input.value, description: save.elements.description.value };
    const reply = await api("PUT", "/api/v1/audiences/" + encodeURIComponent(name), body);
    if (reply.status < 300) { show(save.querySelector(".result"), true, "OK"); location.reload(); }
    else show(save.querySelector(".result"), false, explain(reply));
  });
}

// A saved audience's page lists its first members.
async function audienceMembers() {
  const list = document.querySelector("#audience-members[data-audience]");
  if (!list) return;
  const path = "/api/v1/audiences/" + encodeURIComponent(list.dataset.audience) + "/members?limit=" + list.dataset.limit;
  const reply = await api("GET", path);
  if (reply.status === 200) list.replaceChildren(...reply.json.members.map(userItem));
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
  audienceBox();
  audienceMembers();
});
