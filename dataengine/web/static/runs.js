// The runs pages (/runs and /runs/{id}): poll the page's JSON about once a second and change the
// page in place, without reloading it. Every value is written as text, never as HTML.
"use strict";

const API = "/runs/api";
const POLL_MS = 1000; // while something may change
const IDLE_POLL_MS = 5000; // a finished run's page (it changes only if someone retries it)
// Cancel and retry are refused without this header: a form on another site cannot send it.
const HEADERS = { "X-DataEngine-Page": "1" };
const ACTIVE = new Set(["queued", "running"]);
const RETRYABLE = new Set(["failed", "cancelled"]);

class LoggedOut extends Error {}

async function call(path, method = "GET") {
  const response = await fetch(API + path, { method, headers: HEADERS, credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    location.assign("/runs/login?next=" + encodeURIComponent(location.pathname));
    throw new LoggedOut();
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

// Small DOM helpers ---------------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value);
  }
  node.append(...children.filter((c) => c !== null && c !== undefined).map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

const $ = (id) => document.getElementById(id);
const show = (node, visible) => node.classList.toggle("hidden", !visible);

// Replace a cell's content only when it changed, so rows do not flicker and links keep their hover.
function put(td, content) {
  const node = content instanceof Node ? content : document.createTextNode(content ?? "");
  const signature = node instanceof Element ? node.outerHTML : node.textContent;
  if (td.dataset.signature !== signature) {
    td.replaceChildren(node);
    td.dataset.signature = signature;
  }
}

// Rebuild a node's children only when what they show changed (a reader's selection survives the polls).
function renderIf(node, data, build) {
  const signature = JSON.stringify(data);
  if (node.dataset.signature !== signature) {
    node.replaceChildren(...build());
    node.dataset.signature = signature;
  }
}

// Words and numbers ---------------------------------------------------------------------------------

const integer = new Intl.NumberFormat("en-US");

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
}

function when(iso) {
  if (!iso) return "—";
  const at = new Date(iso);
  const today = at.toDateString() === new Date().toDateString();
  return today ? at.toLocaleTimeString() : at.toLocaleString();
}

const tokens = (run) => integer.format(run.prompt_tokens + run.completion_tokens);
const cost = (run) => "$" + run.cost_usd.toFixed(4);
const eta = (run) => (run.status === "running" && run.eta_s !== null ? duration(run.eta_s) : "—");
const took = (run) =>
  run.started_at && run.finished_at ? duration((new Date(run.finished_at) - new Date(run.started_at)) / 1000) : "—";

function steps(run) {
  if (!run.total_steps) return run.status === "queued" ? "waiting for a worker" : "—";
  return `${run.job.step_noun} ${integer.format(run.completed_steps)} of ${integer.format(run.total_steps)}`;
}

function status(run) {
  const cancelling = run.cancel_requested && ACTIVE.has(run.status);
  if (run.stalled_at && run.status === "running" && !cancelling) {
    return el("span", { class: "status status-stalled", title: `no step recorded since ${when(run.stalled_at)}` },
      "stalled");
  }
  return el("span", { class: `status status-${run.status}` }, cancelling ? "cancelling…" : run.status);
}

function progress(run) {
  return el("div", { class: "progress-cell" },
    el("progress", { max: "100", value: String(run.progress_pct) }),
    el("span", { class: "steps" }, steps(run)));
}

// A lease owner is <celery node>/<pid>/<process space>/<nonce>: show the node and pid, keep all of it in the title.
function worker(run) {
  if (!run.worker) return "—";
  const [node, pid] = run.worker.split("/");
  return el("span", { class: "worker", title: run.worker }, pid ? `${node} · pid ${pid}` : node);
}

function showConnection(error) {
  const node = $("connection");
  node.classList.toggle("lost", error !== null);
  node.textContent = error === null
    ? `live · updated ${new Date().toLocaleTimeString()}`
    : `connection lost (${error.message}); retrying…`;
}

// Poll with refresh() (which answers how long to wait); poke() polls at once, one poll at a time.
function poller(refresh) {
  let timer = null;
  let busy = false;
  let again = false;
  async function poke() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    clearTimeout(timer);
    let delay = POLL_MS;
    try {
      delay = await refresh();
      showConnection(null);
    } catch (error) {
      if (error instanceof LoggedOut) return;
      showConnection(error);
    } finally {
      busy = false;
    }
    if (again) {
      again = false;
      return poke();
    }
    timer = setTimeout(poke, document.hidden ? IDLE_POLL_MS : delay);
  }
  document.addEventListener("visibilitychange", () => document.hidden || poke());
  poke();
  return poke;
}

// /runs ---------------------------------------------------------------------------------------------

function runLink(run) {
  return el("div", {},
    el("a", { class: "run-link", href: `/runs/${run.id}` }, run.job.name, run.label ? ` · ${run.label}` : ""),
    el("div", { class: "sub" }, run.id.slice(0, 8)));
}

const ACTIVE_CELLS = [
  runLink, status, progress, eta,
  (run) => el("span", { title: `${run.prompt_tokens} prompt + ${run.completion_tokens} completion` }, tokens(run)),
  cost, worker, (run) => when(run.started_at ?? run.created_at),
];
const RECENT_CELLS = [
  runLink, status, progress,
  (run) => (run.error_message ? el("span", { class: "error-text", title: run.error_message }, run.error_message) : ""),
  tokens, cost, took, (run) => when(run.finished_at),
];
const NUMERIC = new Set([4, 5]); // tokens and cost, in both tables

function renderRuns(tbody, runs, cells) {
  const rows = new Map([...tbody.rows].map((tr) => [tr.dataset.runId, tr]));
  runs.forEach((run, i) => {
    let tr = rows.get(run.id);
    rows.delete(run.id);
    if (!tr) {
      tr = el("tr", { "data-run-id": run.id, "data-kind": run.kind });
      cells.forEach((_, c) => tr.append(el("td", { class: NUMERIC.has(c) ? "num" : null })));
    }
    cells.forEach((render, c) => put(tr.cells[c], render(run)));
    if (tbody.rows[i] !== tr) tbody.insertBefore(tr, tbody.rows[i] ?? null);
  });
  for (const gone of rows.values()) gone.remove();
}

function runsPage() {
  poller(async () => {
    const page = await call("/runs");
    renderRuns($("active-runs"), page.active, ACTIVE_CELLS);
    renderRuns($("recent-runs"), page.recent, RECENT_CELLS);
    $("active-count").textContent = page.active.length ? `(${page.active.length})` : "";
    show($("active-empty"), page.active.length === 0);
    show($("recent-empty"), page.recent.length === 0);
    return POLL_MS;
  });
}

// /runs/{id} ----------------------------------------------------------------------------------------

const words = (name) => name.replaceAll("_", " ");
const COLUMN_TITLES = { query_index: "#", cost_usd: "cost", latency_ms: "latency (ms)" };

function cellText(value, column) {
  if (value === null || value === undefined) return "";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (column === "cost_usd") return "$" + value.toFixed(6);
  if (column === "query_index") return String(value + 1);
  return typeof value === "number" ? integer.format(value) : value;
}

function summaryValue(value) {
  if (value === null || value === undefined) return "—";
  if (Array.isArray(value)) {
    if (value.length === 0) return "none";
    if (value.every((v) => typeof v !== "object" || v === null)) return value.join(", ");
    return el("ul", {}, ...value.map((v) => el("li", {}, summaryValue(v))));
  }
  if (typeof value === "object") {
    return Object.entries(value).map(([k, v]) => `${words(k)}: ${typeof v === "object" && v !== null ? JSON.stringify(v) : v}`).join(" · ");
  }
  return typeof value === "number" && !Number.isInteger(value) ? value.toFixed(3) : String(value);
}

function renderFacts(run) {
  const facts = [
    ["ETA", eta(run)],
    ["Tokens", `${tokens(run)} (${integer.format(run.prompt_tokens)} prompt, ${integer.format(run.completion_tokens)} completion)`],
    ["Cost", cost(run)],
    ["Worker", worker(run)],
    ["Created", when(run.created_at)],
    ["Started", when(run.started_at)],
    ["Last update", when(run.last_updated_at)],
    ["Finished", when(run.finished_at)],
    ["Took", took(run)],
  ];
  renderIf($("run-facts"), [run, worker(run)?.outerHTML], () =>
    facts.flatMap(([name, value]) => [el("dt", {}, name), el("dd", {}, value)]));
}

// A run's events, oldest first: when, what, at which step, by which worker, and why.
const EVENT_WORDS = { step_failed: "step failed", handed_back: "handed back", lease_lost: "lease lost" };

function renderHistory(events, run) {
  renderIf($("history"), events, () => events.map((e) => {
    const step = e.step_index === null ? null : `at ${run.job.step_noun} ${e.step_index + 1}/${run.total_steps}`;
    const who = e.worker ? worker({ worker: e.worker }) : null;
    return el("li", { class: `event event-${e.event}` },
      el("time", { datetime: e.at, title: e.at }, when(e.at)),
      el("strong", {}, EVENT_WORDS[e.event] ?? e.event),
      step ? el("span", { class: "step" }, step) : null,
      who ? el("span", { class: "by" }, "by ", who) : null,
      e.detail ? el("span", { class: "detail" }, e.detail) : null);
  }));
}

function renderResults(results, noun, plural) {
  const titles = results.columns.map((c) => (c === "step" ? noun : COLUMN_TITLES[c] ?? words(c)));
  renderIf($("results-head"), titles, () => titles.map((t) => el("th", {}, t)));
  renderIf($("results-body"), results.rows, () => results.rows.map((row) =>
    el("tr", {}, ...results.columns.map((c) => {
      const value = row[c];
      const numeric = typeof value === "number";
      return el("td", { class: numeric ? "num" : null, title: typeof value === "string" && value.length > 60 ? value : null },
        cellText(value, c));
    }))));
  const first = results.total ? results.offset + 1 : 0;
  const last = results.offset + results.rows.length;
  $("results-count").textContent = `(${integer.format(results.total)} ${results.total === 1 ? noun : plural})`;
  $("results-range").textContent = results.total ? `${first}–${last} of ${integer.format(results.total)}` : "";
  show($("results-empty"), results.total === 0);
  $("results-prev").disabled = results.offset === 0;
  $("results-next").disabled = last >= results.total;
}

function runPage(runId) {
  let offset = 0;
  let pageSize = 50;
  let current = null;
  let actedOn = null; // the status an action's message was about

  const poke = poller(async () => {
    let detail;
    try {
      detail = await call(`/runs/${runId}?offset=${offset}`);
    } catch (error) {
      if (error.status !== 404) throw error;
      $("run-title").textContent = "No such run";
      return IDLE_POLL_MS;
    }
    const run = detail.run;
    current = run;
    pageSize = detail.results.limit;
    document.title = `${run.job.name} ${run.status} · dataengine`;
    $("run-title").textContent = run.label ? `${run.job.name} · ${run.label}` : run.job.name;
    $("run-status").replaceChildren(status(run));
    $("run-progress").value = run.progress_pct;
    $("run-steps").textContent = `${steps(run)} · ${run.progress_pct.toFixed(0)}%`;
    renderFacts(run);
    $("run-error").textContent = run.error_message ?? "";
    $("run-error").className = run.status === "failed" ? "error" : "note";
    show($("run-error"), Boolean(run.error_message));
    if (actedOn !== null && actedOn !== run.status) {
      $("action-message").textContent = "";
      actedOn = null;
    }
    show($("cancel"), ACTIVE.has(run.status));
    $("cancel").disabled = run.cancel_requested;
    show($("retry"), RETRYABLE.has(run.status));
    show($("summary-section"), run.summary !== null);
    if (run.summary !== null) {
      renderIf($("summary"), run.summary, () => Object.entries(run.summary).flatMap(([k, v]) =>
        [el("dt", {}, words(k)), el("dd", {}, summaryValue(v))]));
    }
    renderHistory(detail.events, run);
    renderResults(detail.results, run.job.step_noun, run.job.step_plural);
    return ACTIVE.has(run.status) ? POLL_MS : IDLE_POLL_MS;
  });

  async function act(action, button) {
    const message = $("action-message");
    button.disabled = true;
    try {
      const state = await call(`/runs/${runId}/${action}`, "POST");
      if (action === "retry") message.textContent = "queued again: it resumes from its checkpoint";
      else if (state.status === "cancelled") message.textContent = "cancelled";
      else message.textContent = "cancel requested: the run stops within seconds";
      actedOn = state.status;
    } catch (error) {
      if (!(error instanceof LoggedOut)) message.textContent = `${action} failed: ${error.message}`;
    } finally {
      button.disabled = false;
      poke();
    }
  }

  $("cancel").addEventListener("click", () => {
    const plural = current ? current.job.step_plural : "steps";
    if (confirm(`Cancel this run? It stops after the ${plural} in flight; you can retry it later from its checkpoint.`)) {
      act("cancel", $("cancel"));
    }
  });
  $("retry").addEventListener("click", () => act("retry", $("retry")));
  $("results-prev").addEventListener("click", () => {
    offset = Math.max(0, offset - pageSize);
    poke();
  });
  $("results-next").addEventListener("click", () => {
    offset += pageSize;
    poke();
  });
}

document.addEventListener("DOMContentLoaded", () => {
  if (document.body.dataset.page === "runs") runsPage();
  else if (document.body.dataset.page === "run") runPage(document.body.dataset.runId);
});
