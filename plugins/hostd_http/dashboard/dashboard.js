// The hostd dashboard: asks /api/stats (hostd/stats.py) for the figures once a second and draws them.
// No framework and no build step. Every number sits in an element with a data-field attribute, inside
// elements that name its model (data-model), version (data-version) and transport (data-transport),
// so a test can read what the page shows.
"use strict";

const POLL_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
const CHART = { width: 240, height: 48, seconds: 60 };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const DASH = "\u2013";
const count = (n) => (n === null || n === undefined ? DASH : n.toLocaleString("en-US"));
const decimals = (x) => (x === null ? DASH : x.toFixed(x < 10 ? 2 : 1));
const percent = (x) => (x === null ? DASH : `${(x * 100).toFixed(1)}%`);

function codes(figures) {
  // Every code answered since start, errors after OK; an error's share of the window's requests beside it.
  const names = Object.keys(figures.codes).sort((a, b) => (a === "OK" ? -1 : b === "OK" ? 1 : a.localeCompare(b)));
  return names.map((code) => el("span", { class: code === "OK" ? "code" : "code error", "data-code": code },
    `${code} `, el("b", { "data-field": "count" }, count(figures.codes[code])),
    code in figures.errors ? el("i", { "data-field": "share" }, ` ${percent(figures.errors[code])}`) : null));
}

function trafficRow(transport, figures) {
  return el("tr", { "data-transport": transport },
    el("td", { "data-field": "transport" }, transport),
    el("td", { "data-field": "requests" }, count(figures.requests)),
    el("td", { "data-field": "per-s" }, decimals(figures.per_s)),
    el("td", { "data-field": "p50-ms" }, decimals(figures.p50_ms)),
    el("td", { "data-field": "p99-ms" }, decimals(figures.p99_ms)),
    el("td", { "data-field": "error-rate" }, percent(figures.error_rate)),
    el("td", { class: "codes", "data-field": "codes" }, codes(figures)));
}

function trafficTable(model) {
  const head = ["transport", "requests", "req/s", "p50 ms", "p99 ms", "errors", "by code (since start, share now)"];
  return el("table", { class: "traffic" },
    el("thead", {}, el("tr", {}, head.map((name) => el("th", {}, name)))),
    el("tbody", {}, Object.entries(model.transports).map(([name, figures]) => trafficRow(name, figures))),
    el("tfoot", {}, trafficRow("all", model.all)));
}

function versionsTable(model) {
  const rows = model.versions.map((v) => el("tr", { "data-version": v.version },
    el("td", { "data-field": "version" }, v.version),
    el("td", { class: `state ${v.state}`, "data-field": "state" }, v.state),
    el("td", { "data-field": "reason" }, v.reason),
    el("td", { "data-field": "hit-rate" }, v.cache ? percent(v.cache.hit_rate) : DASH),
    el("td", { "data-field": "cache" }, v.cache ? `${count(v.cache.hits)} hits, ${count(v.cache.misses)} misses` : "no cache")));
  return el("table", { class: "versions" },
    el("thead", {}, el("tr", {}, ["version", "state", "reason", "cache hit rate", "cache rows"].map((n) => el("th", {}, n)))),
    el("tbody", {}, rows));
}

function chart(series, times, values, caption) {
  // A line over the last minute: x is seconds before now, y from 0 to the highest value; gaps where
  // a second had no requests to take a latency from.
  const top = Math.max(0, ...values.filter((v) => v !== null));
  const x = (t) => (CHART.width * (t + CHART.seconds)) / CHART.seconds;
  const y = (v) => CHART.height - 2 - (top ? ((CHART.height - 4) * v) / top : 0);
  let d = "";
  let pen = "M";
  values.forEach((v, i) => {
    if (v === null) { pen = "M"; return; }
    d += `${pen}${x(times[i]).toFixed(1)},${y(v).toFixed(1)} `;
    pen = "L";
  });
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${CHART.width} ${CHART.height}`);
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", d.trim());
  svg.append(path);
  const drawn = values.filter((v) => v !== null).length;
  return el("figure", { class: "chart", "data-series": series, "data-points": drawn }, svg,
    el("figcaption", {}, `${caption}, last minute (max ${decimals(drawn ? top : null)})`));
}

function modelSection(model) {
  const b = model.batches;
  const sizes = Object.entries(b.sizes).map(([rows, calls]) => `\u2264${rows}: ${count(calls)}`).join(", ");
  return el("section", { class: "model", "data-model": model.name },
    el("h2", {}, model.name,
      el("span", { class: "meta" }, "queue ", el("b", { "data-field": "pending" }, count(model.pending))),
      el("span", { class: "meta" }, "model calls ", el("b", { "data-field": "batch-calls" }, count(b.calls)),
        ", rows per call ", el("b", { "data-field": "batch-mean" }, decimals(b.mean_rows)),
        sizes ? `, calls by rows ${sizes}` : "")),
    el("div", { class: "top" }, versionsTable(model),
      chart("per-s", model.history.t, model.history.per_s, "req/s"),
      chart("p99-ms", model.history.t, model.history.p99_ms, "p99 ms")),
    trafficTable(model));
}

function draw(stats) {
  document.getElementById("models-loaded").textContent = count(stats.models_loaded);
  document.getElementById("window").textContent = stats.window_s.toFixed(1);
  document.getElementById("models").replaceChildren(...stats.models.map(modelSection));
}

function say(state, text) {
  const status = document.getElementById("status");
  status.dataset.state = state;
  status.textContent = text;
}

// The API key, for this tab only (sessionStorage: gone when the tab closes). It comes from the URL's
// fragment (/dashboard#key=...: a browser never sends a fragment, so no server or proxy logs it) or
// from the form; /api/stats gets it as a Bearer header. Without keys on, there is none and none is needed.
const KEY = "hostd.key";
// A key is printable ASCII: anything else no header can carry (fetch would throw on every poll).
const PRINTABLE = /^[\x20-\x7e]+$/;
let timer = null; // the next poll; none while the page waits for a key

function useKey(key) {
  if (!PRINTABLE.test(key)) {
    sessionStorage.removeItem(KEY); // not the key before it either: the form asks for one
    askForKey("This key is not valid: a key is printable ASCII.", "no valid key");
    return;
  }
  sessionStorage.setItem(KEY, key);
  document.getElementById("key-form").hidden = true;
  say("starting", "connecting\u2026");
  pollSoon(0);
}

function takeKeyFromFragment() {
  // Whether the fragment held a key (useKey then polls with it, or asks for another).
  const match = /^#key=(.+)$/.exec(location.hash);
  if (!match) return false;
  history.replaceState(null, "", location.pathname + location.search); // out of the address bar and history
  let key = match[1];
  try { key = decodeURIComponent(key); } catch { /* not %-encoded: the key as it is */ }
  useKey(key);
  return true;
}

function askForKey(problem, state) {
  clearTimeout(timer); // no more polls until a key comes, from the form or the fragment
  // The figures shown so far are no longer this key's to see.
  document.getElementById("models").replaceChildren();
  document.getElementById("models-loaded").textContent = DASH;
  document.getElementById("key-problem").textContent = `${problem} A key with the read scope:`;
  document.getElementById("key-form").hidden = false;
  say("error", state);
}

function pollSoon(ms) {
  clearTimeout(timer); // one poll loop, however many ways it was restarted
  timer = setTimeout(poll, ms);
}

async function poll() {
  const key = sessionStorage.getItem(KEY);
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  try {
    const response = await fetch("/api/stats", { headers, cache: "no-store" });
    const body = await response.json();
    if (response.status === 403) {
      askForKey("This key lacks the read scope.", "403 forbidden");
      return;
    }
    if (response.status === 401) {
      askForKey(key ? "This key is not valid." : "An API key is needed.", "401 no valid key");
      return;
    }
    if (!response.ok) {
      say("error", `${response.status} ${body.type}: ${(body.messages || []).join("; ")}`);
    } else {
      draw(body);
      document.body.dataset.polls = Number(document.body.dataset.polls) + 1;
      say("live", `live, updated ${new Date().toLocaleTimeString("en-GB")}`);
    }
  } catch (error) {
    say("error", `hostd does not answer (${error.message}); retrying`);
  }
  pollSoon(POLL_MS);
}

document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  useKey(input.value.trim());
  input.value = "";
});
window.addEventListener("hashchange", takeKeyFromFragment); // a key pasted into the address bar later
if (!takeKeyFromFragment()) pollSoon(0);
