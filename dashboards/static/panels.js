/* Rendering of the non-chart panels: headline figures, chart legends, the fleet table, rollout, learner and
   ingest. Each function takes one API payload and replaces its panel's content. */
"use strict";

function setKpi(id, value, foot, extra) {
  const node = document.getElementById(id);
  node.querySelector(".value").textContent = value;
  const f = node.querySelector(".foot");
  f.replaceChildren(...[foot, extra].filter(Boolean).map((x) => (x instanceof Node ? x : document.createTextNode(x))));
}

function renderSummary(s) {
  const r = s.robots;
  setKpi("kpi-robots", r.total ? `${r.live} / ${r.total}` : "–",
    r.total ? `${r.stale} stale · ${r.down} down` : "no heartbeats");
  setKpi("kpi-success-hour", fmt.rate(s.success.last_hour), fmt.band(s.success.last_hour));
  setKpi("kpi-success-all", fmt.rate(s.success.all), fmt.band(s.success.all));
  setKpi("kpi-episodes", fmt.int(s.episodes.last_hour), `${fmt.int(s.episodes.stored)} stored in all`);
  const ipe = s.episodes.last_hour ? (s.interventions_last_hour / s.episodes.last_hour).toFixed(2) + " per episode" : "";
  setKpi("kpi-interventions", fmt.int(s.interventions_last_hour), ipe);
  setKpi("kpi-champion", `v${s.champion}`, s.canary === null ? "no canary running"
    : `canary v${s.canary} on ${s.canary_robots} robot${s.canary_robots === 1 ? "" : "s"}`);
  setKpi("kpi-learner", s.learner ? fmt.int(s.learner.step) : "–",
    s.learner ? `loss ${fmt.num(s.learner.loss, 4)} · ${fmt.age(s.learner.age_s)}` : "no learner reports");
  const bar = el("div", { class: "bar" }, el("span", { style: { width: Math.min(100, 100 * s.store.fill).toFixed(1) + "%",
    background: s.store.fill > 0.9 ? "#f5a524" : "#5eb3f6" } }));
  setKpi("kpi-store", fmt.pct(s.store.fill, 0) + " full", `${fmt.bytes(s.store.stored_bytes)} of ${fmt.bytes(s.store.capacity_bytes)}`, bar);
}

function renderLegend(id, chart, p) {
  const items = (chart.series || []).map((s) => el("span", { class: "item" + (chart.hidden.has(s.key) ? " off" : ""),
    "data-key": s.key, title: "click to hide or show", onclick: () => { chart.toggle(s.key); renderLegend(id, chart, p); } },
    el("span", { class: "swatch", style: { background: chart.color(s) } }), s.label,
    el("span", { class: "val" }, s.episodes ? `${fmt.pct(s.total.rate)} · n=${fmt.int(s.episodes)}` : "no episodes")));
  if (p.omitted) items.push(el("span", { class: "item muted" }, `+${p.omitted} more`));
  document.getElementById(id).replaceChildren(...items);
}

function renderEventKey() {
  document.getElementById("event-key").replaceChildren(el("span", {}, "markers:"),
    ...Object.entries(EVENT_LABELS).map(([k, label]) => el("span", {},
      el("span", { class: "mark", style: { background: EVENT_COLORS[k] } }), label)));
}

function renderFleet(f) {
  const rows = f.robots.map((r) => el("tr", { class: `status-${r.status}`, "data-robot": r.robot },
    el("td", { class: "mono", "data-col": "robot" }, r.robot),
    el("td", { "data-col": "embodiment" }, r.embodiment ?? "–"),
    el("td", { "data-col": "task" }, r.task ?? "–"),
    el("td", { "data-col": "status", title: r.heartbeat_age_s === null ? "no heartbeat" : `heartbeat ${fmt.age(r.heartbeat_age_s)}` },
      el("span", { class: `pill ${r.status}` }, r.status === "unknown" ? "no heartbeat" : r.status)),
    el("td", { "data-col": "version" }, r.version === null || r.version < 0 ? "–" : `v${r.version}`,
      r.cohort === "canary" ? el("span", { class: "tag" }, "canary") : null),
    el("td", { class: "num", "data-col": "control_rate" },
      r.loop_hz === null ? "–" : `${r.loop_hz.toFixed(1)} / ${r.target_hz.toFixed(0)} Hz`),
    el("td", { "data-col": "success_hour" }, rateCell(r.success_hour)),
    el("td", { "data-col": "success_all" }, rateCell(r.success_all)),
    el("td", { class: "num", "data-col": "interventions_per_hour" }, fmt.int(r.interventions_per_hour)),
    el("td", { class: "num", "data-col": "spool_backlog" }, r.spool_backlog === null ? "–" : fmt.int(r.spool_backlog))));
  const body = document.querySelector("#fleet-table tbody");
  if (!rows.length) rows.push(el("tr", {}, el("td", { colSpan: 10, class: "muted" }, "No robots have reported yet.")));
  body.replaceChildren(...rows);
  const counts = f.robots.reduce((a, r) => ((a[r.status] = (a[r.status] || 0) + 1), a), {});
  document.getElementById("fleet-hint").textContent =
    `${f.robots.length} robots · ${counts.live || 0} live · ${counts.stale || 0} stale · ${counts.down || 0} down`;
}

function ciTrack(rb, color) {
  const track = el("div", { class: "track" });
  if (rb && rb.n) {
    track.append(el("span", { class: "ci", style: { left: 100 * rb.lo + "%", width: 100 * (rb.hi - rb.lo) + "%", background: color } }),
      el("span", { class: "pt", style: { left: 100 * rb.rate + "%", background: color } }));
  }
  return track;
}

function renderRollout(r) {
  const body = document.getElementById("rollout-body");
  const head = el("div", { class: "champ" }, el("span", { class: "muted" }, "champion"),
    el("span", { class: "big", id: "rollout-champion" }, `v${r.champion}`));
  if (r.canary !== null) {
    head.append(el("span", { class: "muted" }, "· canary"), el("span", { class: "big canary", id: "rollout-canary" }, `v${r.canary}`),
      el("span", { class: "muted" }, `on ${r.canary_robots.length} robot${r.canary_robots.length === 1 ? "" : "s"} · for ${fmt.age(r.now - r.canary_since).replace(" ago", "")}`));
  } else if (r.outcome) {
    head.append(el("span", { class: "muted" }, `· last trial v${r.trial}:`),
      el("span", { class: `badge ${r.outcome.decision}` }, r.outcome.decision === "promote" ? "promoted" : "rolled back"));
  }
  const nodes = [head];
  if (!r.gates.length) nodes.push(el("div", { class: "muted" }, "No canary trial yet: a new version runs on a canary cohort per embodiment before it is promoted."));
  for (const g of r.gates) {
    // the gate's own counts once it has decided; until then what the canary has done since it started
    const gated = g.decision !== null;
    const can = gated ? g.canary_success : g.live_canary, champ = gated ? g.champion_success : g.live_champion;
    const stat = g.statistic === null ? "gate: not enough canary episodes yet"
      : g.test === "beta_binomial" ? `P(canary ≥ champion − margin) = ${g.statistic.toFixed(3)}` : `${g.test} = ${g.statistic.toFixed(3)}`;
    const decision = g.verdict || g.decision;
    nodes.push(el("div", { class: "gate", "data-embodiment": g.embodiment },
      el("div", { class: "row" }, el("span", { class: "emb" }, g.embodiment),
        el("span", { class: `badge ${decision || "none"}`, "data-col": "decision" }, decision || "collecting")),
      el("div", { class: "cmp" },
        el("span", {}, `canary v${g.version}`), ciTrack(can, "#c084fc"),
        el("span", { class: "num", "data-col": "canary_rate" }, can && can.n ? `${fmt.rate(can)} (${can.ok}/${can.n})` : "–"),
        el("span", {}, `champion v${g.champion}`), ciTrack(champ, "#5eb3f6"),
        el("span", { class: "num", "data-col": "champion_rate" }, champ && champ.n ? `${fmt.rate(champ)} (${champ.ok}/${champ.n})` : "–")),
      el("div", { class: "foot" }, el("span", { "data-col": "statistic" }, stat),
        el("span", {}, gated ? `gate ${fmt.age(r.now - g.t)}` : "live counts"))));
  }
  if (r.cohorts.length) {
    nodes.push(el("h3", {}, "Cohorts (from heartbeats)"), el("ul", { class: "list" }, r.cohorts.map((c) =>
      el("li", {}, el("span", {}, `${c.embodiment} · ${c.cohort}`), el("span", { class: "muted" }, `v${c.version} · ${c.robots} robot${c.robots === 1 ? "" : "s"}`)))));
  }
  body.replaceChildren(...nodes);
  document.getElementById("rollout-hint").textContent = r.canary !== null ? `trial of v${r.canary} running` : "";
}

function renderLearner(l, lossChart) {
  const s = l.status;
  const stat = (k, v, id) => el("div", { class: "stat" }, el("div", { class: "k" }, k), el("div", { class: "v", id }, v));
  const parts = s ? Object.entries(s.parts).map(([k, v]) => stat(k, fmt.num(v, 4))) : [];
  document.getElementById("learner-stats").replaceChildren(
    stat("step", s ? fmt.int(s.step) : "–", "learner-step"), stat("loss", s ? fmt.num(s.loss, 4) : "–"),
    stat("samples / s", s ? fmt.num(s.samples_per_s, 1) : "–"), ...parts,
    stat("learning rate", s ? fmt.num(s.lr, 6) : "–"), stat("episodes seen", s ? fmt.int(s.episodes_seen) : "–"),
    stat("versions published", fmt.int(l.versions.published), "learner-published"),
    stat("last report", s ? fmt.age(s.age_s) : "–"));
  const link = document.getElementById("mlflow-link");
  link.classList.toggle("hidden", !l.mlflow_url);
  if (l.mlflow_url) link.href = l.mlflow_url;
  lossChart.update(l.history);
  const mix = s ? Object.entries(s.mixture) : [];
  document.getElementById("learner-mixture").replaceChildren(...(mix.length ? [el("h3", {}, "Data mixture (recent batches)"),
    el("div", { class: "mixbar" }, mix.map(([k, v]) => el("span", { title: `${k} ${fmt.pct(v)}`,
      style: { width: 100 * v + "%", background: colorFor("mix", k) } }))),
    el("div", { class: "mixkey" }, mix.map(([k, v]) => el("span", {}, el("i", { style: { background: colorFor("mix", k) } }), `${k} ${fmt.pct(v, 0)}`)))] : []));
  const recent = l.versions.recent;
  document.getElementById("learner-versions").replaceChildren(...(recent.length ? [el("h3", {}, "Version events"),
    el("ul", { class: "list" }, recent.slice(0, 8).map((e) => el("li", {},
      el("span", {}, el("span", { class: `ev ${e.kind}` }, `v${e.version} ${EVENT_LABELS[e.kind]}`),
        e.embodiment ? el("span", { class: "muted" }, ` · ${e.embodiment}`) : null),
      el("span", { class: "muted" }, fmt.age(l.now - e.t)))))] : []));
}

function renderIngest(g, bars) {
  bars.update(g.hourly);
  const st = g.store;
  const rows = g.by_embodiment.map((e) => el("tr", { "data-embodiment": e.embodiment },
    el("td", {}, el("span", { class: "swatch-dot", style: { color: colorFor("embodiment", e.embodiment) } }, "● "), e.embodiment),
    el("td", { class: "num", "data-col": "episodes_hour" }, fmt.int(e.episodes_hour)),
    el("td", { class: "num" }, fmt.bytes(e.bytes_hour)),
    el("td", { class: "num", "data-col": "episodes_24h" }, fmt.int(e.episodes_24h)),
    el("td", { class: "num" }, fmt.bytes(e.stored_bytes))));
  const fill = Math.min(1, st.fill), res = st.capacity_bytes ? Math.min(1, st.reservoir.bytes / st.capacity_bytes) : 0;
  document.getElementById("ingest-body").replaceChildren(
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "embodiment"), el("th", { class: "num" }, "ep / h"),
      el("th", { class: "num" }, "bytes / h"), el("th", { class: "num" }, "ep / 24 h"), el("th", { class: "num" }, "stored"))),
    el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", { colSpan: 5, class: "muted" }, "No episodes yet."))])),
    el("div", { class: "capacity" }, el("h3", {}, "Store capacity"),
      el("div", { class: "meter", title: "reservoir (never evicted) · other stored episodes" },
        el("span", { style: { width: 100 * res + "%", background: "#a78bfa" } }),
        el("span", { style: { width: 100 * Math.max(0, fill - res) + "%", background: fill > 0.9 ? "#f5a524" : "#5eb3f6" } })),
      el("div", { class: "mixkey" },
        el("span", { id: "ingest-capacity" }, `${fmt.bytes(st.stored.bytes)} of ${fmt.bytes(st.capacity_bytes)} (${fmt.pct(st.fill, 0)})`),
        el("span", {}, el("i", { style: { background: "#a78bfa" } }), `reservoir ${fmt.int(st.reservoir.episodes)} ep · ${fmt.bytes(st.reservoir.bytes)}`))),
    el("ul", { class: "list", style: { marginTop: "8px" } },
      el("li", {}, el("span", {}, "stored"), el("span", { class: "muted" }, `${fmt.int(st.stored.episodes)} episodes · ${fmt.int(st.stored.steps)} steps`)),
      el("li", {}, el("span", {}, "ingested"), el("span", { class: "muted" }, `${fmt.int(st.ingested.episodes)} episodes · ${fmt.bytes(st.ingested.bytes)}`)),
      el("li", {}, el("span", {}, "evicted"), el("span", { class: "muted" }, `${fmt.int(st.evicted_episodes)} episodes · ${fmt.bytes(st.evicted_bytes)}`)),
      el("li", {}, el("span", {}, "dead letters"), el("span", { class: st.deadletters ? "ev rejected" : "muted" }, fmt.int(st.deadletters)))));
}
