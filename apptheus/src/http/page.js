"use strict";
// The containers page: refreshes the table from api/containers every 2 s and sorts it by the
// heading clicked. Every value is set with textContent or setAttribute, never parsed as HTML:
// job ids and names come from users' environments. The units follow src/http/format.rs.
(() => {
  const REFRESH_MS = 2000;
  const NONE = "\u2014";
  const SVG = "http://www.w3.org/2000/svg";
  const HEIGHT = 24;
  const table = document.getElementById("containers");
  const status = document.getElementById("status");
  const heads = Array.from(table.tHead.rows[0].cells);
  let sort = { key: "cpu", dir: -1 };
  let view = null;
  let refreshes = 0;

  const fmt = {
    cores: (c) => c.toFixed(2),
    bytes: (b) => {
      const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
      let v = b, u = 0;
      while (v >= 1024 && u + 1 < units.length) { v /= 1024; u += 1; }
      if (u === 0) return b + " B";
      if (v >= 999.5 && u + 1 < units.length) return "1.0 " + units[u + 1];
      return (v >= 99.95 ? v.toFixed(0) : v.toFixed(1)) + " " + units[u];
    },
    duration: (secs) => {
      const s = Number.isFinite(secs) && secs > 0 ? Math.floor(secs) : 0;
      const two = (n) => String(n).padStart(2, "0");
      if (s < 60) return s + "s";
      if (s < 3600) return Math.floor(s / 60) + "m" + two(s % 60) + "s";
      if (s < 86400) return Math.floor(s / 3600) + "h" + two(Math.floor(s % 3600 / 60)) + "m";
      return Math.floor(s / 86400) + "d" + two(Math.floor(s % 86400 / 3600)) + "h";
    },
    cpuTime: (s) => (s < 60 ? Math.max(0, s).toFixed(1) + "s" : fmt.duration(s)),
  };
  const or = (v, f) => (v === null || v === undefined ? NONE : f(v));

  // Sort keys by column; numbers sort highest first on the first click, text A to Z.
  const keys = {
    id: (c) => c.id,
    user: (c) => c.user,
    job: (c) => c.job_id ?? "",
    state: (c) => c.state,
    age: (c) => view.time - c.start_time,
    cpu: (c) => c.cpu_cores ?? -1,
    cputime: (c) => c.cpu_seconds ?? -1,
    mem: (c) => c.memory_bytes ?? -1,
    peak: (c) => c.memory_peak_bytes ?? -1,
    limit: (c) => c.memory_limit_bytes ?? -1,
    procs: (c) => c.processes,
    exit: (c) => c.exit_code ?? -1,
  };

  function compare(a, b) {
    const k = keys[sort.key];
    const x = k(a), y = k(b);
    const order = typeof x === "number" ? x - y : String(x).localeCompare(String(y));
    return sort.dir * order || a.id.localeCompare(b.id);
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  // A chart as the server draws it (page.rs `chart`): one pixel per step, the right edge now.
  function chart(cls, values, last, top, label) {
    const points = view.points;
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "chart " + cls);
    svg.setAttribute("width", String(points));
    svg.setAttribute("height", String(HEIGHT));
    svg.setAttribute("viewBox", "0 0 " + points + " " + HEIGHT);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", label);
    const title = document.createElementNS(SVG, "title");
    title.textContent = label;
    svg.appendChild(title);
    if (last === null || last === undefined) return svg;
    const offset = Math.max(0, Math.floor((view.time - last) / view.step_seconds));
    let line = [];
    const flush = () => {
      if (line.length) {
        const p = document.createElementNS(SVG, "polyline");
        p.setAttribute("points", line.join(" "));
        svg.appendChild(p);
      }
      line = [];
    };
    values.forEach((v, i) => {
      const x = points - 1 - offset - (values.length - 1 - i);
      if (v === null || x < 0) return flush();
      const y = HEIGHT - 1 - (v / top) * (HEIGHT - 2);
      line.push(x + "," + y.toFixed(1));
    });
    flush();
    return svg;
  }

  function charts(tr, c) {
    const h = c.history || { last: null, cpu_cores: [], memory_bytes: [] };
    const span = fmt.duration(view.step_seconds * view.points);
    const max = (vs) => vs.reduce((m, v) => (v === null ? m : Math.max(m, v)), 0);
    const cpu = max(h.cpu_cores), mem = max(h.memory_bytes);
    const cpuLabel = "CPU, the last " + span + ": up to " + fmt.cores(cpu) + " cores";
    const memLabel = "Memory, the last " + span + ": up to " + fmt.bytes(mem);
    cell(tr, "", "chart").appendChild(
      chart("cpu", h.cpu_cores, h.last, Math.max(1, Math.ceil(cpu)), cpuLabel));
    cell(tr, "", "chart").appendChild(
      chart("mem", h.memory_bytes, h.last, Math.max(mem * 1.2, 1024 * 1024), memLabel));
  }

  function row(c) {
    const tr = document.createElement("tr");
    tr.dataset.id = c.id;
    cell(tr, c.id, "id");
    cell(tr, c.user);
    const job = cell(tr, c.job_id ?? NONE);
    if (c.scheduler) job.title = c.scheduler;
    cell(tr, c.state, c.state === "live" ? "live" : "ended");
    cell(tr, fmt.duration(view.time - c.start_time), "n");
    cell(tr, or(c.cpu_cores, fmt.cores), "n");
    cell(tr, or(c.cpu_seconds, fmt.cpuTime), "n");
    cell(tr, or(c.memory_bytes, fmt.bytes), "n");
    cell(tr, or(c.memory_peak_bytes, fmt.bytes), "n");
    cell(tr, or(c.memory_limit_bytes, fmt.bytes), "n");
    cell(tr, String(c.processes), "n");
    cell(tr, or(c.exit_code, String), "n");
    charts(tr, c);
    return tr;
  }

  function render() {
    if (!view) return;
    const rows = view.containers.slice().sort(compare).map(row);
    table.tBodies[0].replaceChildren(...rows);
    for (const th of heads) {
      if (th.dataset.key === sort.key) {
        th.setAttribute("aria-sort", sort.dir < 0 ? "descending" : "ascending");
      } else {
        th.removeAttribute("aria-sort");
      }
    }
    const live = view.containers.filter((c) => c.state === "live").length;
    status.textContent = live + " live, " + (view.containers.length - live) + " ended \u00b7 updated " +
      new Date(view.time * 1000).toLocaleTimeString();
    status.className = "";
  }

  async function refresh() {
    try {
      const r = await fetch("api/containers", { cache: "no-store", credentials: "same-origin" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      view = await r.json();
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      render();
    } catch (e) {
      status.textContent = "refresh failed (" + e.message + ")" +
        (view ? "; showing " + new Date(view.time * 1000).toLocaleTimeString() : "");
      status.className = "stale";
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }

  for (const th of heads) {
    const key = th.dataset.key;
    if (!key) continue;
    th.addEventListener("click", () => {
      const numeric = th.classList.contains("n");
      sort = sort.key === key ? { key, dir: -sort.dir } : { key, dir: numeric ? -1 : 1 };
      render();
    });
  }
  refresh();
})();
