/* Formatting, colours and a tiny DOM builder. Everything the page shows goes through textContent (never
   innerHTML with data), so a robot named "<script>" is just a name. */
"use strict";

const PALETTE = ["#4cc9f0", "#f472b6", "#facc15", "#34d399", "#a78bfa", "#fb923c", "#60a5fa", "#f87171",
  "#2dd4bf", "#c084fc", "#a3e635", "#fda4af"];
const EVENT_COLORS = { published: "#60a5fa", canary: "#c084fc", promoted: "#22c55e", rolled_back: "#ef4444",
  rejected: "#f5a524" };
const EVENT_LABELS = { published: "published", canary: "canary", promoted: "promoted", rolled_back: "rolled back",
  rejected: "rejected" };

const fmt = {
  pct(x, digits = 1) { return x === null || x === undefined ? "–" : (100 * x).toFixed(digits) + "%"; },
  int(x) { return x === null || x === undefined ? "–" : Math.round(x).toLocaleString("en-US"); },
  num(x, digits = 2) {
    if (x === null || x === undefined || !isFinite(x)) return "–";
    const a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
    return x.toFixed(digits);
  },
  bytes(b) {
    if (b === null || b === undefined) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b.toFixed(0) : b.toFixed(b < 10 ? 1 : 0)) + " " + u[i];
  },
  age(s) {
    if (s === null || s === undefined) return "–";
    if (s < 1) return "now";
    if (s < 90) return Math.round(s) + " s ago";
    if (s < 5400) return Math.round(s / 60) + " min ago";
    if (s < 172800) return Math.round(s / 3600) + " h ago";
    return Math.round(s / 86400) + " d ago";
  },
  time(t) {
    const d = new Date(t * 1000);
    return d.toLocaleString("en-GB", { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" });
  },
  duration(s) {
    if (s % 86400 === 0) return s / 86400 + " d";
    if (s % 3600 === 0) return s / 3600 + " h";
    if (s % 60 === 0) return s / 60 + " min";
    return Math.round(s) + " s";
  },
  rate(rb) { return rb && rb.n ? `${fmt.pct(rb.rate)}` : "–"; },
  band(rb) {
    return rb && rb.n ? `CI ${(100 * rb.lo).toFixed(0)}–${fmt.pct(rb.hi, 0)} · n=${fmt.int(rb.n)}` : "no episodes";
  },
};

/* rate -> colour: red below 50 %, amber to 80 %, green above (for meters, not for series) */
function rateColor(r) {
  if (r === null || r === undefined) return "#55647f";
  return r < 0.5 ? "#ef4444" : r < 0.8 ? "#f5a524" : "#22c55e";
}

/* stable colours per key: known embodiments and policy versions get the same colour on every screen and in
   every session; other keys keep the colour they were first given */
const colorFor = (() => {
  const assigned = new Map([["embodiment:franka", PALETTE[0]], ["embodiment:yam_bimanual", PALETTE[1]],
    ["embodiment:so101", PALETTE[2]], ["embodiment:so100", PALETTE[3]]]);
  return (scope, key) => {
    const k = scope + ":" + key;
    if (scope === "version" && /^\d+$/.test(key)) return PALETTE[Number(key) % PALETTE.length];
    if (!assigned.has(k)) {
      const n = [...assigned.keys()].filter((x) => x.startsWith(scope + ":")).length;
      assigned.set(k, PALETTE[n % PALETTE.length]);
    }
    return assigned.get(k);
  };
})();

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v);
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

/* a success-rate cell: meter + rate + n, carrying the raw figures as data attributes for tests */
function rateCell(rb) {
  const r = rb && rb.n ? rb.rate : null;
  return el("span", { class: "rate", "data-rate": r === null ? "" : r.toFixed(4), "data-n": rb ? rb.n : 0 },
    el("span", { class: "meter" }, el("span", { style: { width: r === null ? "0" : (100 * r).toFixed(1) + "%",
      background: rateColor(r) } })),
    el("span", { class: "v" }, fmt.rate(rb)),
    el("span", { class: "n" }, rb && rb.n ? `n=${fmt.int(rb.n)}` : ""));
}
