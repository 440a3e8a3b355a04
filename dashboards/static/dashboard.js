/* The page's loop: poll the JSON API every refresh_s (from /api/summary), render every panel, keep going through
   errors (a store outage shows a banner and the page recovers by itself). The chosen window lives in the URL
   hash, so a link reproduces the view. */
"use strict";

const WINDOWS = ["1h", "6h", "24h", "7d", "30d", "90d"];
const dash = {
  window: WINDOWS.includes(new URLSearchParams(location.hash.slice(1)).get("window"))
    ? new URLSearchParams(location.hash.slice(1)).get("window") : "6h",
  refreshS: 2, inflight: false, last: null, loaded: false, timer: null, charts: null,
};
window.molmoDash = dash;  // for operators poking at the console, and for the browser test

async function getJSON(path) {
  const r = await fetch(path, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } });
  if (!r.ok) {
    let msg = r.statusText;
    try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return r.json();
}

function banner(text, kind, code) {
  const b = document.getElementById("banner");
  if (!text) { b.classList.add("hidden"); return; }
  b.className = "banner" + (kind === "err" ? " err" : "");
  b.replaceChildren(text, ...(code ? [" ", el("code", {}, code)] : []));
}

function setConn(ok, text) {
  const c = document.getElementById("conn");
  c.classList.toggle("ok", ok);
  c.classList.toggle("err", !ok);
  document.getElementById("updated").textContent = text;
}

async function refresh() {
  if (dash.inflight) return;
  dash.inflight = true;
  const w = encodeURIComponent(dash.window);
  try {
    const [summary, byEmb, byVer, fleet, rollout, learner, ingest] = await Promise.all([
      getJSON("/api/summary"), getJSON(`/api/success?group_by=embodiment&window=${w}`),
      getJSON(`/api/success?group_by=version&window=${w}`), getJSON("/api/fleet"), getJSON("/api/rollout"),
      getJSON("/api/learner"), getJSON("/api/ingest"),
    ]);
    dash.refreshS = summary.refresh_s || 2;
    const c = dash.charts;
    renderSummary(summary);
    c.embodiment.update(byEmb);
    renderLegend("legend-embodiment", c.embodiment, byEmb);
    c.version.update(byVer);
    renderLegend("legend-version", c.version, byVer);
    for (const [id, p] of [["hint-embodiment", byEmb], ["hint-version", byVer]]) {
      document.getElementById(id).textContent =
        `rolling ${fmt.duration(p.rolling_s)} · ${fmt.duration(p.width_s)} steps · band: 95% Wilson`;
    }
    renderFleet(fleet);
    renderRollout(rollout);
    renderLearner(learner, c.loss);
    renderIngest(ingest, c.ingest);
    if (summary.empty) {
      banner("The replay store is empty and no robot has reported yet. Start a fleet and this page fills in as episodes arrive:",
        "info", "fleet demo");
    } else if (byEmb.partial || byVer.partial) {
      banner("Reading older history from the store… the charts complete over the next refreshes.", "info");
    } else {
      banner(null);
    }
    dash.last = { summary, byEmb, byVer, fleet, rollout, learner, ingest };
    dash.loaded = true;
    document.body.dataset.loaded = "1";
    setConn(true, "updated " + new Date().toLocaleTimeString("en-GB"));
  } catch (e) {
    if (e.status === 401) {
      banner("This dashboard needs a token. Open it once as", "err", "/?token=<token>");
    } else {
      banner(`Cannot read the fleet: ${e.message}. Retrying every ${dash.refreshS} s.`, "err");
    }
    setConn(false, "disconnected");
  } finally {
    dash.inflight = false;
  }
}

function schedule() {
  clearTimeout(dash.timer);
  dash.timer = setTimeout(async () => {
    if (!document.hidden) await refresh();  // a background tab does not poll
    schedule();
  }, dash.refreshS * 1000);
}

function pickWindow(w) {
  dash.window = w;
  history.replaceState(null, "", "#window=" + w);
  for (const b of document.querySelectorAll("#window-picker button")) b.classList.toggle("active", b.dataset.window === w);
}

function start() {
  dash.charts = {
    embodiment: new RateChart(document.getElementById("chart-embodiment"), "embodiment", { showOverall: true }),
    version: new RateChart(document.getElementById("chart-version"), "version"),
    loss: new LossChart(document.getElementById("chart-loss")),
    ingest: new StackedBars(document.getElementById("chart-ingest")),
  };
  renderEventKey();
  pickWindow(dash.window);
  document.getElementById("window-picker").addEventListener("click", (ev) => {
    const w = ev.target.dataset && ev.target.dataset.window;
    if (!w) return;
    pickWindow(w);
    refresh();
  });
  window.addEventListener("hashchange", () => {  // a pasted link or back/forward picks another window
    const w = new URLSearchParams(location.hash.slice(1)).get("window");
    if (WINDOWS.includes(w) && w !== dash.window) { pickWindow(w); refresh(); }
  });
  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });
  refresh().then(schedule);
}

document.addEventListener("DOMContentLoaded", start);
