// Uploads: send the study page's form with a transfer progress bar, then follow the
// batch's analyses live (analysed / total, failures) until every image has a result.
(function () {
  "use strict";

  function setCounts(panel, progress) {
    panel.querySelectorAll("[data-count]").forEach((node) => {
      const value = progress[node.dataset.count];
      if (value !== undefined) node.textContent = value;
    });
    const bar = panel.querySelector("progress");
    if (bar) {
      bar.max = Math.max(progress.images, 1);
      bar.value = progress.analysed + progress.failed;
    }
    const done = panel.querySelector(".batch-done");
    if (done) done.hidden = !progress.finished;
    panel.dataset.finished = progress.finished ? "1" : "0";
  }

  function follow(panel) {
    const url = panel.dataset.progressUrl;
    async function poll() {
      try {
        const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
        if (response.ok) setCounts(panel, await response.json());
      } catch (err) {
        console.warn("upload progress poll failed", err);
      }
      if (panel.dataset.finished !== "1") window.setTimeout(poll, 2000);
    }
    if (panel.dataset.finished !== "1") window.setTimeout(poll, 1000);
  }

  document.querySelectorAll(".batch-progress[data-progress-url]").forEach(follow);

  const form = document.getElementById("upload-form");
  const transfer = document.getElementById("upload-transfer");
  if (!form || !transfer || !window.FormData) return;
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const bar = transfer.querySelector("progress");
    const text = transfer.querySelector("[data-transfer-text]");
    const button = form.querySelector("button[type=submit]");
    transfer.hidden = false;
    if (button) button.disabled = true;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      bar.max = e.total;
      bar.value = e.loaded;
      text.textContent = e.loaded < e.total ? "Sending… " + Math.round((100 * e.loaded) / e.total) + "%" : "Checking the files…";
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch (err) {
        body = null;
      }
      if (body && body.batch) {
        window.location.assign(window.location.pathname + "?batch=" + body.batch + "#last-upload");
        return;
      }
      text.textContent = (body && body.error) || (xhr.status === 400 ? "The upload was refused: too many files at once? Put them in a zip." : "The upload failed (" + xhr.status + "); try again.");
      if (button) button.disabled = false;
    });
    xhr.addEventListener("error", () => {
      text.textContent = "The upload was interrupted; check the connection and try again.";
      if (button) button.disabled = false;
    });
    xhr.send(new FormData(form));
  });
})();
