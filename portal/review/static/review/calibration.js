// The site calibration page: while a fit it lists is queued or running, ask for its
// status every few seconds and show the page again once it has finished (its result, or
// the reason it failed, is then in the table).
(function () {
  "use strict";
  const section = document.getElementById("calibration-fits");
  if (!section) return;
  const urls = (section.dataset.poll || "").split(" ").filter(Boolean);
  if (!urls.length) return;
  const INTERVAL_MS = 3000;

  function poll() {
    Promise.all(
      urls.map((url) =>
        fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
          .then((response) => (response.ok ? response.json() : null))
          .catch(() => null)
      )
    ).then((fits) => {
      let changed = false;
      fits.forEach((fit) => {
        if (!fit) return;
        const row = document.getElementById("fit-" + fit.id);
        if (!row) return;
        if (row.dataset.status !== fit.status) {
          row.dataset.status = fit.status;
          const cell = row.querySelector(".fit-status");
          if (cell) cell.textContent = fit.status;
        }
        if (fit.finished) changed = true;
      });
      if (changed) window.location.reload();
      else window.setTimeout(poll, INTERVAL_MS);
    });
  }
  window.setTimeout(poll, INTERVAL_MS);
})();
