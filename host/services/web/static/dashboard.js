// edgewatch dashboard: every value from the server is put on the page with
// textContent (never innerHTML), so a hostile device id or error text stays text.
"use strict";

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function fmtNum(x) { return x === null || x === undefined ? "–" : (Math.round(x * 100) / 100).toString(); }
function fmtTime(t) { return t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "–"; }
function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}
// chart times are UTC wall-clock strings, so the axis reads the same in every time zone
function utc(t) { return new Date(t * 1000).toISOString().slice(0, 23).replace("T", " "); }
function fromUtc(s) { return Date.parse(String(s).replace(" ", "T") + (String(s).length > 10 ? "Z" : "T00:00:00Z")) / 1000; }
// plotly reads a subset of HTML in titles and names: give it the text with < > & escaped
function plotText(x) { return String(x).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;"); }
function deviceHref(d) { return "/device/" + encodeURIComponent(d); }

function liveStream(query, onMessage) {
  const badge = document.getElementById("live");
  const es = new EventSource("/events" + (query || ""));
  es.onopen = () => { badge.className = "live on"; };
  es.onerror = () => { badge.className = "live off"; };
  es.onmessage = (ev) => { try { onMessage(JSON.parse(ev.data)); } catch (e) { console.error(e); } };
  return es;
}

// ------------------------------------------------------------------ fleet
function fleetPage() {
  const devices = new Map();
  const tbody = document.querySelector("#fleet tbody");
  const filter = document.getElementById("filter");
  let sortKey = "device", sortDir = 1;

  function readings(d) {
    const v = (d.latest && d.latest.values) || {};
    return Object.keys(v).sort().map((k) => k + " " + fmtNum(v[k])).join(", ");
  }
  function verdict(d) {
    if (!d.latest) return "";
    const f = d.latest.faults || [];
    return d.latest.anomaly ? "anomaly" + (f.length ? " (" + f.join(", ") + ")" : "") : "ok";
  }
  function sortValue(d, key) {
    if (key === "readings") return readings(d);
    if (key === "verdict") return verdict(d);
    const v = d[key];
    return v === null || v === undefined ? "" : v;
  }
  function row(d) {
    const tr = document.createElement("tr");
    tr.dataset.device = d.device;
    const a = el("a", d.device); a.href = deviceHref(d.device);
    const td = el("td"); td.appendChild(a); td.className = "device"; tr.appendChild(td);
    tr.appendChild(el("td", d.state || "?", d.state === "online" ? "online" : "offline"));
    const seen = el("td", ago(d.last_seen)); seen.title = fmtTime(d.last_seen); tr.appendChild(seen);
    tr.appendChild(el("td", readings(d), "readings"));
    tr.appendChild(el("td", verdict(d), d.latest && d.latest.anomaly ? "anomaly" : ""));
    for (const k of ["outbox", "dropped", "epoch"]) tr.appendChild(el("td", d[k] ?? "–", "num"));
    tr.appendChild(el("td", d.model || "–"));
    tr.appendChild(el("td", d.fw || "–"));
    tr.appendChild(el("td", d.heap_free ?? "–", "num"));
    tr.appendChild(el("td", d.error || ""));
    return tr;
  }
  function matches(d, f) {
    if (!f) return true;
    return [d.device, d.state, d.model, d.fw, d.error, verdict(d)]
      .some((x) => x && String(x).toLowerCase().includes(f));
  }
  function render() {
    const f = filter.value.trim().toLowerCase();
    const list = [...devices.values()].filter((d) => matches(d, f));
    list.sort((a, b) => {
      const x = sortValue(a, sortKey), y = sortValue(b, sortKey);
      return (x < y ? -1 : x > y ? 1 : 0) * sortDir;
    });
    const frag = document.createDocumentFragment();
    for (const d of list) { d.tr = row(d); frag.appendChild(d.tr); }
    tbody.replaceChildren(frag);
    document.getElementById("count").textContent = list.length + " of " + devices.size + " boards";
    document.querySelectorAll("#fleet th").forEach((th) => {
      th.classList.toggle("sorted-asc", th.dataset.key === sortKey && sortDir > 0);
      th.classList.toggle("sorted-desc", th.dataset.key === sortKey && sortDir < 0);
    });
  }
  function refreshRow(d) {
    if (!d.tr || !d.tr.isConnected) { render(); return; }
    const tr = row(d); tr.className = "flash";
    d.tr.replaceWith(tr); d.tr = tr;
    setTimeout(() => tr.classList.remove("flash"), 1000);
  }
  document.querySelectorAll("#fleet th[data-key]").forEach((th) => th.addEventListener("click", () => {
    if (sortKey === th.dataset.key) sortDir = -sortDir; else { sortKey = th.dataset.key; sortDir = 1; }
    render();
  }));
  filter.addEventListener("input", render);

  fetch("/api/fleet").then((r) => r.json()).then((j) => {
    for (const r of j.rows) {
      const d = {};
      j.cols.forEach((c, i) => { d[c] = r[i]; });
      try { d.latest = d.latest ? JSON.parse(d.latest) : null; } catch (e) { d.latest = null; }
      devices.set(d.device, d);
    }
    render();
    document.body.dataset.loaded = "1";
    document.body.dataset.loadedAt = performance.now();
    liveStream("", (m) => {
      let d = devices.get(m.device);
      const isNew = !d;
      if (isNew) { d = { device: m.device }; devices.set(m.device, d); }
      if (m.kind === "telemetry") {
        d.latest = { seq: m.seq, values: m.values, pred: m.pred, band: m.band,
                     anomaly: m.anomaly, faults: m.faults };
        d.last_seen = m.received; d.state = "online";
        if (m.model) d.model = m.model;
      } else if (m.kind === "status") {
        for (const k of ["state", "fw", "model", "outbox", "heap_free", "dropped", "uptime", "error"]) {
          if (m[k] !== undefined && m[k] !== null) d[k] = m[k];
        }
        if (m.state === "online" && !m.error) d.error = null;
        d.last_seen = m.received;
      } else if (m.kind === "alert") {
        d.last_seen = m.received;
      }
      if (isNew) render(); else refreshRow(d);
    });
  });
  setInterval(() => document.querySelectorAll("#fleet tbody tr").forEach((tr) => {
    const d = devices.get(tr.dataset.device);
    if (d) tr.children[2].textContent = ago(d.last_seen);
  }), 5000);
}

// ------------------------------------------------------------------ device
function devicePage() {
  const device = document.body.dataset.device;
  const enc = encodeURIComponent(device);
  const charts = document.getElementById("charts");
  let current = null;        // the last series answer
  let following = true;      // the range ends at the newest sample: append live readings

  function traces(s, c) {
    const x = s.t.map(utc);
    const ch = s[c];
    const alerts = s.alerts.filter((a) => a[3] === c || a[3] === null);
    return [
      { x, y: ch.lo, name: "band low", mode: "lines", line: { width: 0 }, hoverinfo: "skip",
        showlegend: false, meta: "lo" },
      { x, y: ch.hi, name: "band", mode: "lines", line: { width: 0 }, fill: "tonexty",
        fillcolor: "rgba(42,157,143,0.25)", meta: "hi" },
      { x, y: ch.pred, name: "prediction", mode: "lines", line: { dash: "dot", color: "#2a9d8f" },
        meta: "pred" },
      { x, y: ch.avg, name: plotText(c), mode: "lines", line: { color: "#1d3557" }, meta: "value" },
      { x: alerts.map((a) => utc(a[0])), y: alerts.map((a) => a[4]),
        text: alerts.map((a) => plotText(a[2])), name: "alerts", mode: "markers",
        marker: { color: "#e63946", size: 9, symbol: "x" }, meta: "alerts" },
    ].concat(s.n.some((n) => n > 1) ? [
      // downsampled: each bucket's min..max, so a spike inside a bucket still shows
      { x, y: ch.min, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false,
        meta: "min" },
      { x, y: ch.max, name: "min–max", mode: "lines", line: { width: 0 }, fill: "tonexty",
        fillcolor: "rgba(29,53,87,0.25)", meta: "max" },
    ] : []);
  }

  function draw(s) {
    current = s;
    document.getElementById("points").textContent =
      s.t.length + " points" + (s.n && s.n.some((n) => n > 1) ? " (downsampled)" : "");
    for (const c of s.channels) {
      let div = document.getElementById("chart-" + c);
      if (!div) {
        div = el("div", null, "chart"); div.id = "chart-" + c; charts.appendChild(div);
        div.dataset.channel = c;
      }
      const layout = {
        title: { text: plotText(c) }, margin: { t: 36, r: 20, b: 40, l: 50 }, uirevision: c,
        xaxis: { type: "date", range: [utc(s.range[0]), utc(s.range[1])] },
      };
      Plotly.react(div, traces(s, c), layout, { displaylogo: false, responsive: true });
      if (!div.dataset.bound) {
        div.dataset.bound = "1";
        div.on("plotly_relayout", (ev) => {
          if (ev["xaxis.range[0]"] !== undefined) {
            const a = fromUtc(ev["xaxis.range[0]"]);
            const b = fromUtc(ev["xaxis.range[1]"]);
            load(a, b);
          } else if (ev["xaxis.autorange"]) {
            load(null, null);
          }
        });
      }
    }
    if (!document.body.dataset.loaded) document.body.dataset.loadedAt = performance.now();
    document.body.dataset.loaded = "1";
  }

  function load(start, end) {
    const q = new URLSearchParams();
    if (start !== null && start !== undefined) q.set("start", start);
    if (end !== null && end !== undefined) q.set("end", end);
    q.set("points", Math.min(4000, Math.max(200, Math.round(charts.clientWidth || 1500))));
    return fetch("/api/device/" + enc + "/series?" + q).then((r) => r.json()).then((s) => {
      following = !s.span || s.range[1] >= s.span[1];
      if (s.span) draw(s); else document.getElementById("status").textContent = "no readings stored";
    });
  }

  function alertsTable() {
    fetch("/api/device/" + enc + "/alerts").then((r) => r.json()).then((rows) => {
      const tbody = document.querySelector("#alerts tbody");
      tbody.replaceChildren();
      for (const a of rows) {
        const tr = document.createElement("tr");
        tr.appendChild(el("td", fmtTime(a.t)));
        tr.appendChild(el("td", a.seq));
        tr.appendChild(el("td", a.rule, "anomaly"));
        tr.appendChild(el("td", a.channel || "(device)"));
        tr.appendChild(el("td", fmtNum(a.value), "num"));
        tr.appendChild(el("td", a.lo === null ? "–" : "[" + fmtNum(a.lo) + ", " + fmtNum(a.hi) + "]"));
        tr.appendChild(el("td", fmtNum(a.pred), "num"));
        const notes = (a.notifications || []).map((n) =>
          [n.notifier || "bridge", n.recipient, n.state, n.ref, n.error].filter((x) => x).join(" "));
        tr.appendChild(el("td", notes.length ? notes.join("; ") : "–"));
        tbody.appendChild(tr);
      }
    });
  }

  document.querySelectorAll("button[data-range]").forEach((b) => b.addEventListener("click", () => {
    const r = Number(b.dataset.range);
    if (!current || !current.span) return load(null, null);
    if (r === 0) load(current.span[0], current.span[1]);
    else load(current.span[1] - r, current.span[1]);
  }));

  load(null, null).then(alertsTable);
  liveStream("?device=" + enc, (m) => {
    if (m.kind === "status") {
      document.getElementById("status").textContent =
        m.state + (m.fw ? " · firmware " + m.fw : "") + (m.error ? " · " + m.error : "");
      return;
    }
    if (m.kind === "alert") { alertsTable(); }
    if (m.kind !== "telemetry" || !current || !following) return;
    const t = m.t || m.received;
    const x = utc(t);
    current.span[1] = Math.max(current.span[1], t);
    for (const c of current.channels) {
      const div = document.getElementById("chart-" + c);
      if (!div || !m.values || !(c in m.values)) continue;
      const b = m.band && m.band[c];
      const p = m.pred && m.pred[c];
      Plotly.extendTraces(div, { x: [[x], [x], [x], [x]],
        y: [[b ? b[0] : null], [b ? b[1] : null], [p ?? null], [m.values[c]]] }, [0, 1, 2, 3]);
      const r = div.layout.xaxis.range;
      if (r && t > fromUtc(r[1])) {
        const span = fromUtc(r[1]) - fromUtc(r[0]);
        Plotly.relayout(div, { "xaxis.range": [utc(t - span), x] });
      }
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "fleet") fleetPage();
  else if (page === "device") devicePage();
});
