// The run page: sort the table by a heading, and follow the run live.
// While jobs of the run are queued or running, the script blocks on the
// UWS API's WAIT of one of them (the running one first: it ends first),
// then asks for the table part again ("since" the run's key: 204 when
// nothing changed); when every job has ended it asks every few seconds,
// so that a job added to the run appears without a reload.
"use strict";
(function () {
  const url = window.location.pathname.replace(/\/$/, "") + "/table";
  let sorted = null;  // [column index, direction (1 or -1)]

  function section() { return document.getElementById("run"); }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  function value(row, index) {
    const cell = row.cells[index];
    const text = cell ? cell.textContent.trim() : "";
    const number = parseFloat(text);
    return isNaN(number) || !/^[-+]?[0-9.]/.test(text) ? text : number;
  }

  function compare(a, b) {
    const none = function (v) { return v === "" || v === "–"; };
    if (none(a) || none(b)) return none(a) - none(b);  // empty last
    if (typeof a === typeof b) return a < b ? -1 : a > b ? 1 : 0;
    return typeof a === "number" ? -1 : 1;
  }

  function applySort() {
    if (sorted === null) return;
    const table = document.getElementById("run-table");
    const body = table.tBodies[0];
    const [index, direction] = sorted;
    const rows = Array.from(body.rows);
    rows.sort(function (a, b) {
      const va = value(a, index), vb = value(b, index);
      const empty = (va === "" || va === "–") - (vb === "" || vb === "–");
      return empty || direction * compare(va, vb);
    });
    rows.forEach(function (row) { body.appendChild(row); });
    table.querySelectorAll("thead th").forEach(function (th, i) {
      if (i === index) {
        th.setAttribute("aria-sort", direction > 0 ? "ascending" : "descending");
      } else {
        th.removeAttribute("aria-sort");
      }
    });
  }

  function enableSort() {
    const table = document.getElementById("run-table");
    if (!table) return;
    table.querySelectorAll("thead th").forEach(function (th, index) {
      const button = th.querySelector("button.sort");
      if (!button) return;
      button.addEventListener("click", function () {
        sorted = sorted !== null && sorted[0] === index
          ? [index, -sorted[1]] : [index, 1];
        applySort();
      });
    });
  }

  async function refresh() {
    const key = section().dataset.key;
    const r = await fetch(url + "?since=" + encodeURIComponent(key),
                          { headers: { "Accept": "text/html" } });
    if (r.status === 204) return true;
    if (!r.ok) return false;
    const holder = document.createElement("div");
    holder.innerHTML = await r.text();
    const fresh = holder.querySelector("#run");
    if (!fresh) return false;
    section().replaceWith(fresh);
    enableSort();
    applySort();
    return true;
  }

  async function follow() {
    for (;;) {
      try {
        const waiting = JSON.parse(section().dataset.waiting || "[]");
        const job = waiting.find(function (j) { return j.phase === "EXECUTING"; })
          || waiting.find(function (j) { return j.phase !== "HELD" && j.phase !== "SUSPENDED"; });
        if (job) {
          await fetch(job.api + "?WAIT=10&PHASE=" + job.phase);
        } else {
          await sleep(3000);
        }
        if (!(await refresh())) await sleep(5000);
      } catch (e) {
        await sleep(5000);  // the service is restarting: try again
      }
    }
  }
  enableSort();
  follow();
})();
