// The job page: follow the job with the UWS API's blocking WAIT (the
// request returns as soon as the phase changes), then refresh the report
// from the server.  While the job runs, WAIT is 1 s so that the steps
// advance on the page; a held or suspended job is looked at every 10 s.
"use strict";
(function () {
  const url = window.location.pathname.replace(/\/$/, "") + "/report";
  const ACTIVE = ["PENDING", "QUEUED", "EXECUTING"];

  function report() { return document.getElementById("report"); }
  function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

  async function refresh() {
    const r = await fetch(url, { headers: { "Accept": "text/html" } });
    if (!r.ok) return false;
    const html = await r.text();
    const holder = document.createElement("div");
    holder.innerHTML = html;
    report().replaceWith(holder.querySelector("#report"));
    return true;
  }

  async function follow() {
    for (;;) {
      const section = report();
      if (section.dataset.final === "true") {
        const abort = document.getElementById("abort");
        if (abort) abort.closest("form").remove();
        return;
      }
      const phase = section.dataset.phase;
      try {
        if (ACTIVE.indexOf(phase) >= 0) {
          const wait = phase === "EXECUTING" ? 1 : 30;
          await fetch(section.dataset.api + "?WAIT=" + wait + "&PHASE=" + phase);
        } else {
          await sleep(10000);
        }
        if (!(await refresh())) return;
      } catch (e) {
        await sleep(5000);  // the service is restarting: try again
      }
    }
  }
  follow();
})();
