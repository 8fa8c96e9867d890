// The Functions page: deploy a zip, invoke with a payload, show an invocation's logs.
// Runs beside the UI's app.js (its $, toast, refreshAll and errorText helpers).
"use strict";

function fnPath(name) { return "/v1/functions/" + encodeURIComponent(name); }

async function fnLogs(name, requestId) {
  const query = "?lines=200" + (requestId ? "&request_id=" + encodeURIComponent(requestId) : "");
  const response = await fetch(fnPath(name) + "/logs" + query, {
    credentials: "same-origin", cache: "no-store", headers: { "X-Meshcloud-UI": "1" } });
  if (!response.ok) return "(" + await errorText(response) + ")";
  const nodes = (await response.json()).nodes || {};
  const lines = [];
  for (const [node, text] of Object.entries(nodes)) {
    for (const line of text.split("\n")) if (line) lines.push(node.slice(0, 8) + "  " + line);
  }
  return lines.length ? lines.join("\n") : "(no log lines)";
}

async function fnInvoke(form) {
  const name = form.elements.name.value;
  const button = form.querySelector("button[type=submit]");
  const box = $("#fn-result");
  button.disabled = true;
  try {
    const response = await fetch(fnPath(name) + "/invoke", {
      method: "POST", credentials: "same-origin",
      headers: { "X-Meshcloud-UI": "1", "Content-Type": "application/octet-stream" },
      body: form.elements.payload.value,
    });
    const text = await response.text();
    const requestId = response.headers.get("x-fn-request-id") || "";
    const status = $("#fn-result-status");
    status.textContent = response.ok ? "ok" : "failed " + response.status;
    status.className = "pill " + (response.ok ? "state-running" : "state-failed");
    const node = (response.headers.get("x-fn-node") || "").slice(0, 8);
    $("#fn-result-meta").textContent = "request " + requestId + " · " +
      (response.headers.get("x-fn-duration-ms") || "?") + " ms" +
      (response.headers.get("x-fn-cold") === "1" ? " · cold start" : " · warm") +
      (node ? " · on " + node : "");
    box.dataset.request = requestId;
    $("#fn-result-body").textContent = text;
    $("#fn-result-logs").textContent = "...";
    box.hidden = false;
    $("#fn-result-logs").textContent = requestId ? await fnLogs(name, requestId) : "";
    refreshAll();
  } catch (e) {
    toast(e.message, "bad");
  } finally {
    button.disabled = false;
  }
}

async function fnDeploy(form) {
  const error = $("#fn-deploy-error");
  error.hidden = true;
  const name = form.elements.name.value;
  const file = form.elements.zip.files[0];
  const params = new URLSearchParams();
  for (const key of ["handler", "memory", "timeout"]) {
    if (form.elements[key].value) params.set(key, form.elements[key].value);
  }
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const response = await fetch(fnPath(name) + "/zip?" + params.toString(), {
      method: "POST", credentials: "same-origin",
      headers: { "X-Meshcloud-UI": "1", "Content-Type": "application/zip" }, body: file,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const reply = await response.json();
    toast("Deployed " + name + " v" + reply.current, "good");
    const select = $("#fn-invoke-name");
    if (select && !Array.from(select.options).some((o) => o.value === name)) {
      select.append(new Option(name, name));
    }
    form.reset();
    refreshAll();
  } catch (e) {
    error.textContent = e.message;
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function fnShowLogs(button) {
  const name = button.dataset.fnLogs;
  const requestId = button.dataset.requestId || "";
  const panel = $("#fn-logs-panel");
  $("#fn-logs-title").textContent = name + (requestId ? " · " + requestId : "");
  panel.dataset.request = requestId;
  $("#fn-logs").textContent = "...";
  panel.hidden = false;
  panel.open = true;
  $("#fn-logs").textContent = await fnLogs(name, requestId);
  panel.scrollIntoView({ block: "nearest" });
}

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form.id === "fn-invoke-form") { event.preventDefault(); fnInvoke(form); }
  if (form.id === "fn-deploy-form") { event.preventDefault(); fnDeploy(form); }
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-fn-logs]");
  if (button) { event.preventDefault(); fnShowLogs(button); }
});
