/* Charts on uPlot (vendored in static/vendor, MIT): success rate with Wilson bands and version-event markers,
   learner loss by step, and hourly ingest as stacked bars. Each chart keeps its uPlot instance and only calls
   setData while the set of series is unchanged, so polling does not flicker. */
"use strict";

const AXIS = { stroke: "#8a9ab5", grid: { stroke: "#1b2640", width: 1 }, ticks: { stroke: "#223050", width: 1 },
  font: "11px system-ui, sans-serif" };
const DPR = () => window.devicePixelRatio || 1;
const tooltip = () => document.getElementById("tooltip");

class BaseChart {
  constructor(container) {
    this.container = container;
    this.u = null;
    this.signature = null;
    this.emptyNote = el("div", { class: "empty hidden" });
    container.append(this.emptyNote);
    new ResizeObserver(() => { if (this.u) this.u.setSize(this.size()); }).observe(container);
  }
  size() { return { width: Math.max(200, this.container.clientWidth), height: Math.max(100, this.container.clientHeight) }; }
  setEmpty(text) { this.emptyNote.textContent = text || ""; this.emptyNote.classList.toggle("hidden", !text); }
  rebuild(opts, data) {
    if (this.u) this.u.destroy();
    this.u = new uPlot({ ...this.size(), legend: { show: false }, ...opts }, data, this.container);
  }
  showTip(u, lines, title) {
    const tip = tooltip();
    if (u.cursor.idx === null || u.cursor.idx === undefined || u.cursor.left < 0) { tip.classList.add("hidden"); return; }
    const box = u.over.getBoundingClientRect();
    tip.replaceChildren(el("div", { class: "t" }, title), ...lines.map(([color, name, value]) =>
      el("div", { class: "r" }, el("span", {}, el("i", { style: { background: color } }), name), el("b", {}, value))));
    tip.classList.remove("hidden");
    const x = box.left + u.cursor.left + 14, y = box.top + u.cursor.top + 14;
    tip.style.left = Math.min(x, window.innerWidth - tip.offsetWidth - 8) + "px";
    tip.style.top = Math.min(y, window.innerHeight - tip.offsetHeight - 8) + "px";
  }
}

/* success rate (%) over time, one line per series with its 95 % Wilson band, events as dashed verticals */
class RateChart extends BaseChart {
  constructor(container, scope, { showOverall = false } = {}) {
    super(container);
    this.scope = scope;
    this.showOverall = showOverall;
    this.payload = null;
    this.hidden = new Set();  // series keys the operator switched off in the legend (kept across polls)
    container.addEventListener("mouseleave", () => tooltip().classList.add("hidden"));
  }

  toggle(key) {
    if (this.hidden.has(key)) this.hidden.delete(key); else this.hidden.add(key);
    const i = this.series.findIndex((s) => s.key === key);
    if (i >= 0 && this.u) for (const k of [1, 2, 3]) this.u.setSeries(3 * i + k, { show: !this.hidden.has(key) });
  }

  update(p) {
    this.payload = p;
    const series = p.series.slice();
    if (this.showOverall && p.series.length > 1) series.push({ ...p.overall, key: "__all", label: "fleet" });
    this.series = series;
    const pct = (xs) => xs.map((v) => (v === null ? null : 100 * v));
    const data = [p.t];
    for (const s of series) data.push(pct(s.rate), pct(s.lo), pct(s.hi));
    const sig = series.map((s) => s.key).join("|") + "@" + p.width_s;
    this.range = [p.now - p.window_s, p.now];
    if (sig !== this.signature || !this.u) {
      this.signature = sig;
      this.rebuild(this.options(series), data);
    } else {
      this.u.setData(data);
    }
    this.setEmpty(p.empty ? "no episodes in this window" : "");
  }

  color(s) { return s.key === "__all" ? "#cbd5e1" : colorFor(this.scope, s.key); }

  options(series) {
    const uSeries = [{}];
    const bands = [];
    series.forEach((s, i) => {
      const c = this.color(s);
      const fleet = s.key === "__all";
      const show = !this.hidden.has(s.key);
      uSeries.push({ label: s.label, stroke: c, width: fleet ? 1.5 : 2, dash: fleet ? [5, 4] : undefined,
        spanGaps: false, points: { size: 5, fill: c }, show });
      uSeries.push({ label: s.label + " lo", stroke: "rgba(0,0,0,0)", width: 0, points: { show: false }, show });
      uSeries.push({ label: s.label + " hi", stroke: "rgba(0,0,0,0)", width: 0, points: { show: false }, show });
      // bands stay faint: several overlapping intervals must not turn the chart into mud
      if (!fleet) bands.push({ series: [3 * i + 3, 3 * i + 2], fill: c + (series.length > 2 ? "14" : "1f") });
    });
    return {
      padding: [14, 10, 0, 0],
      cursor: { drag: { x: false, y: false }, points: { size: 7 } },
      scales: { x: { time: true, range: () => this.range }, y: { range: [0, 100] } },
      axes: [{ ...AXIS }, { ...AXIS, size: 46, values: (u, vals) => vals.map((v) => v + "%") }],
      series: uSeries,
      bands,
      hooks: { draw: [(u) => this.drawEvents(u)], setCursor: [(u) => this.tip(u)] },
    };
  }

  drawEvents(u) {
    const events = (this.payload && this.payload.events) || [];
    const ctx = u.ctx, dpr = DPR();
    const { top, height, left, width } = u.bbox;
    let lastLabelX = -1e9;
    ctx.save();
    ctx.font = `${10.5 * dpr}px system-ui, sans-serif`;
    for (const ev of events) {
      const x = Math.round(u.valToPos(ev.t, "x", true));
      if (x < left || x > left + width) continue;
      const c = EVENT_COLORS[ev.kind] || "#94a3b8";
      ctx.strokeStyle = c;
      ctx.globalAlpha = 0.85;
      ctx.lineWidth = 1.25 * dpr;
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      ctx.beginPath();
      ctx.moveTo(x + 0.5, top);
      ctx.lineTo(x + 0.5, top + height);
      ctx.stroke();
      ctx.setLineDash([]);
      if (x - lastLabelX > 34 * dpr) {  // skip labels that would overlap the previous one
        const label = `v${ev.version}`;
        ctx.fillStyle = c;
        ctx.globalAlpha = 1;
        ctx.fillText(label, x + 3 * dpr, top + 11 * dpr);
        lastLabelX = x;
      }
    }
    ctx.restore();
  }

  tip(u) {
    const i = u.cursor.idx;
    if (i === null || i === undefined || !this.series) return this.showTip(u, [], "");
    const lines = [];
    this.series.forEach((s) => {
      if (s.rate[i] === null || this.hidden.has(s.key)) return;
      lines.push([this.color(s), s.label, `${fmt.pct(s.rate[i])}  (n=${s.n[i]})`]);
    });
    const p = this.payload;
    const near = p.events.filter((e) => Math.abs(e.t - u.data[0][i]) <= p.width_s / 2);
    for (const e of near) lines.push([EVENT_COLORS[e.kind], `v${e.version} ${EVENT_LABELS[e.kind]}`, e.embodiment || "fleet"]);
    this.showTip(u, lines, `${fmt.time(u.data[0][i])} · rolling ${fmt.duration(p.rolling_s)}`);
  }
}

/* learner loss (and its parts) against optimizer step */
class LossChart extends BaseChart {
  update(h) {
    const parts = Object.keys(h.parts);
    const sig = parts.join("|");
    const data = [h.step, h.loss, ...parts.map((p) => h.parts[p])];
    if (sig !== this.signature || !this.u) {
      this.signature = sig;
      const names = ["loss", ...parts];
      this.rebuild({
        padding: [10, 10, 0, 0],
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: false } },
        axes: [{ ...AXIS, values: (u, v) => v.map((x) => fmt.int(x)) }, { ...AXIS, size: 50 }],
        series: [{}, ...names.map((n, i) => ({ label: n, stroke: i === 0 ? "#e5ebf5" : colorFor("loss", n),
          width: i === 0 ? 2 : 1.25, points: { show: false } }))],
        hooks: { setCursor: [(u) => this.showTip(u, names.map((n, k) =>
          [k === 0 ? "#e5ebf5" : colorFor("loss", n), n, fmt.num(u.data[k + 1][u.cursor.idx], 4)]),
          `step ${fmt.int(u.data[0][u.cursor.idx])}`)] },
      }, data);
      this.container.addEventListener("mouseleave", () => tooltip().classList.add("hidden"));
    } else {
      this.u.setData(data);
    }
    this.setEmpty(h.step.length ? "" : "no learner reports yet");
  }
}

/* hourly episodes per embodiment as stacked bars (drawn in a hook; uPlot provides scales and axes) */
class StackedBars extends BaseChart {
  update(hourly) {
    const keys = Object.keys(hourly.episodes);
    const t = hourly.t;
    const totals = t.map((_, i) => keys.reduce((a, k) => a + hourly.episodes[k][i], 0));
    this.hourly = hourly;
    this.keys = keys;
    const data = [t.map((x) => x + 1800), totals];
    const sig = keys.join("|");
    this.range = t.length ? [t[0], t[t.length - 1] + 3600] : [0, 1];
    if (sig !== this.signature || !this.u) {
      this.signature = sig;
      this.rebuild({
        padding: [10, 18, 0, 0],
        cursor: { drag: { x: false, y: false }, points: { show: false } },
        scales: { x: { time: true, range: () => this.range }, y: { range: (u, lo, hi) => [0, Math.max(4, hi * 1.1)] } },
        axes: [{ ...AXIS, space: 60 }, { ...AXIS, size: 44 }],
        series: [{}, { label: "total", stroke: "rgba(0,0,0,0)", width: 0, points: { show: false } }],
        hooks: { draw: [(u) => this.drawBars(u)], setCursor: [(u) => this.tip(u)] },
      }, data);
      this.container.addEventListener("mouseleave", () => tooltip().classList.add("hidden"));
    } else {
      this.u.setData(data);
    }
    this.setEmpty(totals.some((x) => x > 0) ? "" : "no episodes in the last 24 h");
  }

  drawBars(u) {
    const ctx = u.ctx, h = this.hourly;
    const barW = Math.max(2, (u.valToPos(3600, "x", true) - u.valToPos(0, "x", true)) * 0.72);
    ctx.save();
    h.t.forEach((t0, i) => {
      const x = u.valToPos(t0 + 1800, "x", true) - barW / 2;
      let acc = 0;
      for (const k of this.keys) {
        const v = h.episodes[k][i];
        if (!v) continue;
        const y0 = u.valToPos(acc, "y", true), y1 = u.valToPos(acc + v, "y", true);
        ctx.fillStyle = colorFor("embodiment", k);
        ctx.fillRect(x, y1, barW, y0 - y1 - 1);
        acc += v;
      }
    });
    ctx.restore();
  }

  tip(u) {
    const i = u.cursor.idx;
    if (i === null || i === undefined) return this.showTip(u, [], "");
    const lines = this.keys.map((k) => [colorFor("embodiment", k), k,
      `${fmt.int(this.hourly.episodes[k][i])} ep · ${fmt.bytes(this.hourly.bytes[k][i])}`]);
    this.showTip(u, lines, `${fmt.time(this.hourly.t[i])} + 1 h`);
  }
}
