// Study page: poll the status endpoint every 2 s and redraw each scan's result.
(function () {
  "use strict";
  const container = document.getElementById("scans");
  if (!container) return;
  const statusUrl = container.dataset.statusUrl;
  const csrfInput = document.querySelector("input[name=csrfmiddlewaretoken]");
  const csrfToken = csrfInput ? csrfInput.value : "";
  const drawn = new Map();
  const ARTIFACT_TITLES = { overlay: "Lesion outline", gradcam: "Grad-CAM", seg_gradcam: "Seg-Grad-CAM", mask: "Lesion mask" };

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([key, value]) => {
      if (key === "text") node.textContent = value;
      // The content security policy refuses style attributes; CSSOM properties are allowed.
      else if (key === "width") node.style.width = value;
      else node.setAttribute(key, value);
    });
    (children || []).forEach((child) => child && node.appendChild(child));
    return node;
  }

  function percent(value) {
    return (value * 100).toFixed(1) + "%";
  }

  function cardFor(entry) {
    let card = document.getElementById("scan-" + entry.scan_id);
    if (card) return card;
    const none = document.getElementById("no-scans");
    if (none) none.remove();
    card = el("article", { class: "card scan", id: "scan-" + entry.scan_id, "data-scan-id": entry.scan_id }, [
      el("header", {}, [
        el("h3", { class: "filename", text: entry.filename }),
        el("span", { class: "muted", text: entry.format + " · " + entry.width + "×" + entry.height }),
        entry.review_url ? el("a", { class: "review-link", href: entry.review_url, text: "Review" }) : null,
        el("span", { class: "status" }),
      ]),
      el("div", { class: "scan-body" }, [
        el("figure", {}, [el("img", { src: entry.original_url, alt: "Original scan", loading: "lazy" }), el("figcaption", { text: "Original" })]),
        el("div", { class: "result" }),
      ]),
    ]);
    container.appendChild(card);
    return card;
  }

  function drawResult(analysis) {
    const parts = [];
    if (analysis.status === "succeeded") {
      parts.push(el("p", { class: "label label-" + analysis.label }, [
        el("strong", { text: analysis.label }),
        document.createTextNode(" · confidence " + percent(analysis.confidence)),
      ]));
      const rows = Object.entries(analysis.probabilities || {}).map(([name, p]) =>
        el("tr", {}, [
          el("th", { text: name }),
          el("td", {}, [el("span", { class: "bar", width: Math.round(p * 100) + "%" })]),
          el("td", { class: "num", text: percent(p) }),
        ]));
      parts.push(el("table", { class: "probabilities" }, [el("tbody", {}, rows)]));
      if (analysis.lesion_area_fraction !== null) {
        parts.push(el("p", { class: "muted", text: "Lesion area: " + percent(analysis.lesion_area_fraction) + " of the image" }));
      }
      const figures = Object.entries(analysis.artifacts || {}).filter(([kind]) => kind !== "mask").map(([kind, url]) =>
        el("figure", {}, [el("a", { href: url }, [el("img", { src: url, alt: ARTIFACT_TITLES[kind] || kind })]), el("figcaption", { text: ARTIFACT_TITLES[kind] || kind })]));
      parts.push(el("div", { class: "artifacts" }, figures));
      parts.push(el("p", { class: "muted small", text: "Model " + analysis.model_version }));
    } else if (analysis.status === "failed") {
      parts.push(el("p", { class: "error" }, [el("strong", { text: "Analysis failed: " }), el("span", { class: "reason", text: analysis.error })]));
      parts.push(el("form", { method: "post", action: analysis.retry_url }, [
        el("input", { type: "hidden", name: "csrfmiddlewaretoken", value: csrfToken }),
        el("button", { type: "submit", text: "Retry" }),
      ]));
    } else {
      parts.push(el("p", { class: "muted", text: analysis.status === "running" ? "Analysing…" : "Waiting for a worker…" }));
      if (analysis.error) parts.push(el("p", { class: "muted small", text: "Last attempt: " + analysis.error }));
    }
    return parts;
  }

  function render(entries) {
    let pending = false;
    entries.forEach((entry) => {
      const card = cardFor(entry);
      const analysis = entry.analysis;
      const status = analysis ? analysis.status : "none";
      if (analysis && !analysis.finished) pending = true;
      const signature = analysis ? [analysis.id, analysis.status, analysis.attempts, analysis.error].join("|") : "none";
      if (drawn.get(entry.scan_id) === signature) return;
      drawn.set(entry.scan_id, signature);
      const badge = card.querySelector(".status");
      badge.className = "status status-" + status;
      badge.textContent = analysis ? status : "not analysed";
      const result = card.querySelector(".result");
      result.replaceChildren(...(analysis ? drawResult(analysis) : []));
    });
    return pending;
  }

  async function poll() {
    let pending = true;
    try {
      const response = await fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) pending = render((await response.json()).scans);
    } catch (err) {
      console.warn("status poll failed", err);
    }
    if (pending) window.setTimeout(poll, 2000);
  }

  poll();
})();
