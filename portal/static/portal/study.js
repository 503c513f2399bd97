// Study page: poll the status endpoint every 2 s and redraw each scan's result; the
// result pictures are drawn here from the stored mask and heatmaps (layers.js).
(function () {
  "use strict";
  const container = document.getElementById("scans");
  if (!container) return;
  const statusUrl = container.dataset.statusUrl;
  const csrfInput = document.querySelector("input[name=csrfmiddlewaretoken]");
  const csrfToken = csrfInput ? csrfInput.value : "";
  const drawn = new Map();
  const LAYER_TITLES = { outline: "Lesion outline", gradcam: "Grad-CAM", seg_gradcam: "Seg-Grad-CAM" };
  const bases = new Map(); // display URL -> promise of the loaded scan

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

  // As portal/review/formats.py: one decimal, half up, and one class order.
  function percent(value) {
    return (Math.round(Number((value * 1000).toPrecision(12))) / 10).toFixed(1) + "%";
  }
  const LABEL_ORDER = ["normal", "benign", "malignant"];
  function inLabelOrder(probabilities) {
    return LABEL_ORDER.filter((name) => name in probabilities).map((name) => [name, probabilities[name]]);
  }

  // The study's review state, as the page drew it at load and the server counts it now.
  function showReviewState(state) {
    const badge = document.getElementById("study-review-state");
    if (!badge || !state || badge.textContent === state) return;
    badge.textContent = state;
    badge.className = "badge " + (state === "reviewed" ? "reviewed" : "unreviewed");
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
        el("figure", {}, [el("img", { src: entry.display_url, alt: "Scan", loading: "lazy" }), el("figcaption", {}, [el("a", { href: entry.original_url, text: "Original" })])]),
        el("div", { class: "result" }),
      ]),
    ]);
    container.appendChild(card);
    return card;
  }

  // One result picture: the scan with one layer over it, at the layer's default opacity.
  function layerFigure(entry, layer) {
    const canvas = el("canvas", { class: "thumb", "data-layer": layer.kind, role: "img", "aria-label": LAYER_TITLES[layer.kind] || layer.kind });
    if (!bases.has(entry.display_url)) bases.set(entry.display_url, window.BusLayers.loadImage(entry.display_url));
    bases.get(entry.display_url).then(async function (base) {
      const width = base.naturalWidth;
      const height = base.naturalHeight;
      const drawable = await window.BusLayers.loadLayer(layer, width, height);
      canvas.width = width;
      canvas.height = height;
      const context = canvas.getContext("2d");
      context.drawImage(base, 0, 0);
      context.globalAlpha = layer.source === "heatmap" ? window.BusLayers.HEATMAP_OPACITY : 1;
      context.drawImage(drawable, 0, 0, width, height);
      canvas.dataset.drawn = "true";
    }).catch(function (error) { console.warn(error); });
    const title = LAYER_TITLES[layer.kind] || layer.kind;
    return el("figure", {}, [el("a", { href: layer.download_url, title: "Download " + title }, [canvas]), el("figcaption", { text: title })]);
  }

  // Same wording as templates/analyses/_distribution_warning.html: a caution, not a
  // verdict. Nothing when the model found the scan familiar, could not tell
  // (in_distribution null) or withheld the result (withheldNotice says why).
  function distributionWarning(analysis) {
    if (analysis.in_distribution !== false || analysis.withheld) return null;
    let figures = "";
    if (analysis.ood_score !== null) {
      figures = "Distance score " + analysis.ood_score.toFixed(2);
      if (analysis.ood_threshold !== null) figures += ", threshold " + analysis.ood_threshold.toFixed(2);
      if (analysis.ood_site_threshold !== null && analysis.ood_site_threshold !== undefined) figures += ", this site's own " + analysis.ood_site_threshold.toFixed(2) + " (unusual for this site's scans too)";
      figures += " (higher is further from the training images).";
    }
    return el("div", { class: "ood-warning", role: "note", "data-analysis": analysis.id }, [
      el("p", { class: "ood-title" }, [
        el("span", { "aria-hidden": "true", text: "⚠ " }),
        el("strong", { text: "Unusual for this model." }),
      ]),
      el("p", { class: "small", text: "This breast ultrasound is far from the images the model learned from (perhaps a scanner or preset it has not seen): a caution, not a verdict. Weigh the result with care. " + figures }),
    ]);
  }

  // Same wording as templates/analyses/_withheld.html. The feed carries no label,
  // probabilities or layers for a withheld analysis: there is nothing else to draw.
  function withheldNotice(analysis) {
    const figures = analysis.gate_score !== null && analysis.gate_score !== undefined
      ? "Gate score " + analysis.gate_score.toFixed(2) + " (higher is less like a breast ultrasound)." : "";
    return el("div", { class: "withheld-notice", role: "alert", "data-analysis": analysis.id }, [
      el("p", { class: "withheld-title" }, [el("strong", { text: "Not analysed: not a breast ultrasound image." })]),
      el("p", { class: "small", text: "No label, probabilities or outline are given for this image. " + figures }),
    ]);
  }

  function drawResult(entry, analysis) {
    const parts = [];
    if (analysis.status === "succeeded" && analysis.withheld) {
      parts.push(withheldNotice(analysis));
      parts.push(el("p", { class: "muted small", text: "Model " + analysis.model_version }));
    } else if (analysis.status === "succeeded") {
      parts.push(distributionWarning(analysis));
      if (analysis.suspicious) parts.push(el("p", {}, [el("span", { class: "badge suspicious", text: "suspicious" })]));
      parts.push(el("p", { class: "label label-" + analysis.label }, [
        el("strong", { text: analysis.label }),
        document.createTextNode(" · confidence " + percent(analysis.confidence)),
      ]));
      const rows = inLabelOrder(analysis.probabilities || {}).map(([name, p]) =>
        el("tr", {}, [
          el("th", { text: name }),
          el("td", {}, [el("span", { class: "bar", width: Math.round(p * 100) + "%" })]),
          el("td", { class: "num", text: percent(p) }),
        ]));
      parts.push(el("table", { class: "probabilities" }, [el("tbody", {}, rows)]));
      if (analysis.lesion_area_fraction !== null) {
        parts.push(el("p", { class: "muted", text: "Lesion area: " + percent(analysis.lesion_area_fraction) + " of the image" }));
      }
      // The outline first, as the study page always showed it.
      const layers = (analysis.layers || []).slice().sort((a, b) => (a.kind === "outline" ? -1 : 0) - (b.kind === "outline" ? -1 : 0));
      parts.push(el("div", { class: "artifacts" }, layers.map((layer) => layerFigure(entry, layer))));
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
      result.replaceChildren(...(analysis ? drawResult(entry, analysis).filter(Boolean) : []));
    });
    return pending;
  }

  async function poll() {
    let pending = true;
    try {
      const response = await fetch(statusUrl, { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (response.ok) {
        const status = await response.json();
        pending = render(status.scans);
        showReviewState(status.review_state);
      }
    } catch (err) {
      console.warn("status poll failed", err);
    }
    if (pending) window.setTimeout(poll, 2000);
  }

  poll();
})();
