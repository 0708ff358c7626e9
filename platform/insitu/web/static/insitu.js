// insitu's web UI: keep the live parts of a page current. Pages work without it.
"use strict";

const UI_HEADER = {"X-Insitu-UI": "1"};

async function fetchText(url) {
  const answer = await fetch(url, {credentials: "same-origin", headers: UI_HEADER});
  if (answer.redirected && new URL(answer.url).pathname === "/ui/login") {
    location.reload();  // signed out meanwhile: the page itself goes to the sign-in page
    throw new Error("signed out");
  }
  if (!answer.ok) throw new Error(`${url}: ${answer.status}`);
  return answer.text();
}

function replaceWith(element, html) {
  const holder = document.createElement("template");
  holder.innerHTML = html.trim();
  const fresh = holder.content.firstElementChild;
  if (fresh) element.replaceWith(fresh);
  return fresh;
}

// The jobs table: its rows again every 2 s while a job is not over.
function followRows(table) {
  const tick = async () => {
    const rows = document.getElementById("job-rows");
    if (!rows || rows.dataset.active !== "true") return;
    try { replaceWith(rows, await fetchText(table.dataset.liveRows)); } catch (e) { /* next tick */ }
    setTimeout(tick, 2000);
  };
  setTimeout(tick, 2000);
}

// A job's page: its status every 1.5 s; once it has ended, the whole page (its results).
function followStatus(holder) {
  const tick = async () => {
    const status = document.getElementById("job-status");
    if (!status) return;
    if (status.dataset.terminal === "true") return;
    try {
      const fresh = replaceWith(status, await fetchText(holder.dataset.liveStatus));
      if (fresh && fresh.dataset.terminal === "true") { location.reload(); return; }
    } catch (e) { /* next tick */ }
    setTimeout(tick, 1500);
  };
  setTimeout(tick, 1500);
}

// A job's log, read on from where it was left until the job has ended.
function followLog(pre) {
  let offset = 0, first = true;
  const tick = async () => {
    try {
      const chunk = JSON.parse(await fetchText(`/v1/jobs/${pre.dataset.job}/logs?offset=${offset}`));
      if (first) { pre.textContent = ""; first = false; }
      if (chunk.text) {
        const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
        pre.textContent += chunk.text;
        if (atEnd) pre.scrollTop = pre.scrollHeight;
      }
      offset = chunk.next_offset;
      if (chunk.complete) { if (!pre.textContent) pre.textContent = "(the log is empty)"; return; }
      setTimeout(tick, chunk.text ? 300 : 1000);
    } catch (e) {
      pre.textContent = `The log cannot be read now (${e.message}).`;
    }
  };
  tick();
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-live-rows]").forEach(followRows);
  document.querySelectorAll("[data-live-status]").forEach(followStatus);
  document.querySelectorAll("pre[data-job]").forEach(followLog);
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => { if (!confirm(form.dataset.confirm)) event.preventDefault(); });
  });
  document.querySelectorAll("input[type=file][data-into]").forEach((input) => {
    input.addEventListener("change", async () => {
      const file = input.files[0];
      if (file) document.getElementById(input.dataset.into).value = await file.text();
    });
  });
  // The link in a credentials file: /ui/login#token=... fills in the token (a fragment is
  // never sent, so it reaches no log). The person still presses Sign in: a link from
  // someone else must not sign them in silently as that someone.
  const login = document.getElementById("login-form");
  if (login && location.hash.startsWith("#token=")) {
    document.getElementById("token").value = decodeURIComponent(location.hash.slice(7));
    history.replaceState(null, "", location.pathname + location.search);
    document.getElementById("from-link").hidden = false;
    login.querySelector("button[type=submit]").focus();
  }
});
