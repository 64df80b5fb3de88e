// deployer's dashboard: a running job's page follows the job's event
// stream (EventSource) and updates its phases in place, without a reload.
"use strict";
(function () {
  const job = document.getElementById("job");
  if (!job || job.dataset.live !== "true") return;
  const id = job.dataset.job;
  const marks = { success: ["✓", "ok"], failed: ["✗", "bad"], running: ["…", "run"], pending: ["○", "skip"] };
  function setStatus(row, status) {
    row.dataset.status = status;
    const cell = row.querySelector("td.st") || row;
    if (!cell) return;
    const [sign, cls] = marks[status] || ["–", "skip"];
    cell.textContent = "";
    const m = document.createElement("span");
    m.className = "mark " + cls;
    m.setAttribute("aria-hidden", "true");
    m.textContent = sign;
    const s = document.createElement("span");
    s.className = "status";
    s.textContent = status;
    cell.append(m, " ", s);
  }
  function row(name) {
    return job.querySelector('tr.phase[data-phase="' + CSS.escape(name) + '"]');
  }
  // The whole job as the server renders it (steps, rollback, errors).
  function refresh() {
    return fetch("/jobs/" + encodeURIComponent(id) + "/part", { credentials: "same-origin" })
      .then((r) => (r.ok ? r.text() : Promise.reject(r.status)))
      .then((html) => { job.innerHTML = html; })
      .catch(() => {});
  }
  const events = new EventSource("/jobs/" + encodeURIComponent(id) + "/events");
  events.onmessage = (m) => {
    let e;
    try { e = JSON.parse(m.data); } catch (_) { return; }
    const st = document.getElementById("job-status");
    if (st && st.dataset.status === "pending" && e.event !== "done") setStatus(st, "running");
    if (e.event === "phase_started") {
      const r = row(e.phase);
      if (r) setStatus(r, "running");
    } else if (e.event === "phase" && e.phase) {
      const r = row(e.phase.phase);
      if (r) {
        setStatus(r, e.phase.status);
        const took = r.querySelector("td.took");
        if (took && e.phase.duration_ms != null) took.textContent = e.phase.duration_ms + " ms";
        const details = r.querySelector("td.details");
        if (details) details.textContent = e.phase.details + (e.phase.error ? "\n" + e.phase.error : "");
      }
    } else if (e.event === "done") {
      events.close();
      job.dataset.live = "false";
      refresh();
    }
  };
  events.onerror = () => { if (job.dataset.live === "false") events.close(); };
})();
