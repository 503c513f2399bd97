// Scan review viewer: the scan's display copy on a canvas with the result layers drawn
// over it (toggle and opacity per layer), zoom and pan, brightness and contrast, and a
// distance ruler in mm where the pixel spacing is known. Nothing is sent to the server.
(function () {
  "use strict";
  const viewer = document.getElementById("viewer");
  const canvas = document.getElementById("viewer-canvas");
  if (!viewer || !canvas || !window.BusLayers) return;
  const context = canvas.getContext("2d");

  // Image coordinates are the original scan's pixels, whatever the display copy's size,
  // so the ruler measures in the pixels the spacing is given for.
  const imageWidth = Number(viewer.dataset.width);
  const imageHeight = Number(viewer.dataset.height);
  const spacingRow = viewer.dataset.spacingRow ? Number(viewer.dataset.spacingRow) : null;
  const spacingCol = viewer.dataset.spacingCol ? Number(viewer.dataset.spacingCol) : null;
  const MIN_ZOOM = 1;
  const MAX_ZOOM = 16;

  const state = {
    base: null,
    layers: [], // {kind, drawable, toggle, opacity}
    zoom: 1, // relative to fitting the whole scan
    centreX: imageWidth / 2, // image point at the canvas centre
    centreY: imageHeight / 2,
    brightness: 0,
    contrast: 0,
    rulerOn: false,
    ruler: null, // {x0, y0, x1, y1} in image pixels
  };

  function fitScale() {
    return Math.min(canvas.width / imageWidth, canvas.height / imageHeight);
  }
  function scale() {
    return fitScale() * state.zoom;
  }
  // Keep the scan on screen: at zoom 1 it is centred, zoomed in it cannot be dragged away.
  function clampCentre() {
    const halfW = canvas.width / scale() / 2;
    const halfH = canvas.height / scale() / 2;
    state.centreX = halfW * 2 >= imageWidth ? imageWidth / 2 : Math.min(Math.max(state.centreX, halfW), imageWidth - halfW);
    state.centreY = halfH * 2 >= imageHeight ? imageHeight / 2 : Math.min(Math.max(state.centreY, halfH), imageHeight - halfH);
  }
  function toImage(clientX, clientY) {
    const box = canvas.getBoundingClientRect();
    const x = ((clientX - box.left) * canvas.width) / box.width;
    const y = ((clientY - box.top) * canvas.height) / box.height;
    return {
      x: state.centreX + (x - canvas.width / 2) / scale(),
      y: state.centreY + (y - canvas.height / 2) / scale(),
    };
  }

  // The reading layout fills the window below the page's head (messages included): its
  // height is the window's less what sits above it, so the page itself never scrolls.
  function fitLayout() {
    const layout = document.getElementById("review-layout");
    if (!layout) return;
    const top = layout.getBoundingClientRect().top + window.scrollY;
    document.documentElement.style.setProperty("--reading-top", Math.ceil(top + 12) + "px");
  }

  // The canvas fills the viewer (sized by the layout); the scan is fitted inside it.
  function resize() {
    fitLayout();
    const ratio = window.devicePixelRatio || 1;
    const width = viewer.clientWidth;
    const height = viewer.clientHeight;
    canvas.style.width = width + "px";
    canvas.style.height = height + "px";
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
    draw();
  }

  function rulerLength() {
    const r = state.ruler;
    if (!r) return null;
    const dx = r.x1 - r.x0;
    const dy = r.y1 - r.y0;
    if (spacingRow !== null && spacingCol !== null) {
      return { value: Math.hypot(dx * spacingCol, dy * spacingRow), unit: "mm" };
    }
    return { value: Math.hypot(dx, dy), unit: "px" };
  }

  function drawRuler() {
    const r = state.ruler;
    if (!r) return;
    const length = rulerLength();
    const text = length.value.toFixed(1) + " " + length.unit;
    const ratio = window.devicePixelRatio || 1;
    const toCanvas = function (x, y) {
      return [(x - state.centreX) * scale() + canvas.width / 2, (y - state.centreY) * scale() + canvas.height / 2];
    };
    const a = toCanvas(r.x0, r.y0);
    const b = toCanvas(r.x1, r.y1);
    // Drawn in canvas pixels, so the line stays thin however far the view is zoomed.
    context.save();
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.lineWidth = 2 * ratio;
    context.strokeStyle = "#00e5ff";
    context.fillStyle = "#00e5ff";
    context.beginPath();
    context.moveTo(a[0], a[1]);
    context.lineTo(b[0], b[1]);
    context.stroke();
    [a, b].forEach(function (p) {
      context.beginPath();
      context.arc(p[0], p[1], 3 * ratio, 0, 2 * Math.PI);
      context.fill();
    });
    context.font = Math.round(13 * ratio) + "px sans-serif";
    context.lineWidth = 3;
    context.strokeStyle = "#000";
    context.strokeText(text, b[0] + 8, b[1] - 8);
    context.fillText(text, b[0] + 8, b[1] - 8);
    context.restore();
  }

  function draw() {
    context.setTransform(1, 0, 0, 1, 0, 0);
    context.fillStyle = "#000";
    context.fillRect(0, 0, canvas.width, canvas.height);
    if (!state.base) return;
    clampCentre();
    const s = scale();
    context.setTransform(s, 0, 0, s, canvas.width / 2 - state.centreX * s, canvas.height / 2 - state.centreY * s);
    context.imageSmoothingEnabled = state.zoom < 4; // zoomed far in, show the pixels
    context.filter = "brightness(" + (1 + state.brightness / 100) + ") contrast(" + (1 + state.contrast / 100) + ")";
    context.drawImage(state.base, 0, 0, imageWidth, imageHeight);
    context.filter = "none";
    context.imageSmoothingEnabled = true;
    state.layers.forEach(function (layer) {
      if (!layer.drawable || !layer.toggle.checked) return;
      context.globalAlpha = Number(layer.opacity.value) / 100;
      context.drawImage(layer.drawable, 0, 0, imageWidth, imageHeight);
    });
    context.globalAlpha = 1;
    drawRuler();
    publish();
  }

  // What is on screen, for the readouts and for tests.
  function publish() {
    const zoomText = Math.round(state.zoom * 100) + "%";
    document.getElementById("zoom-level").textContent = zoomText;
    canvas.dataset.zoom = state.zoom.toFixed(3);
    const box = canvas.getBoundingClientRect();
    canvas.dataset.cssPerImagePixel = box.width ? ((scale() * box.width) / canvas.width).toFixed(6) : "";
    canvas.dataset.centre = state.centreX.toFixed(1) + "," + state.centreY.toFixed(1);
    canvas.dataset.layers = state.layers.filter(function (l) { return l.drawable && l.toggle.checked; }).map(function (l) { return l.kind; }).join(" ");
    const readout = document.getElementById("ruler-readout");
    const length = rulerLength();
    readout.textContent = length ? length.value.toFixed(1) + " " + length.unit + (length.unit === "px" ? " (pixel spacing unknown)" : "") : "";
  }

  function zoomAt(factor, clientX, clientY) {
    const before = clientX === undefined ? null : toImage(clientX, clientY);
    state.zoom = Math.min(MAX_ZOOM, Math.max(MIN_ZOOM, state.zoom * factor));
    if (before) {
      // Keep the point under the pointer where it is.
      const after = toImage(clientX, clientY);
      state.centreX += before.x - after.x;
      state.centreY += before.y - after.y;
    }
    draw();
  }

  function bindControls() {
    document.getElementById("zoom-in").addEventListener("click", function () { zoomAt(1.5); });
    document.getElementById("zoom-out").addEventListener("click", function () { zoomAt(1 / 1.5); });
    document.getElementById("view-reset").addEventListener("click", function () {
      state.zoom = 1;
      state.brightness = 0;
      state.contrast = 0;
      state.ruler = null;
      document.getElementById("brightness").value = "0";
      document.getElementById("contrast").value = "0";
      draw();
    });
    ["brightness", "contrast"].forEach(function (name) {
      const input = document.getElementById(name);
      input.addEventListener("input", function () {
        state[name] = Number(input.value);
        draw();
      });
    });
    const rulerToggle = document.getElementById("ruler-toggle");
    rulerToggle.addEventListener("click", function () {
      state.rulerOn = !state.rulerOn;
      rulerToggle.setAttribute("aria-pressed", String(state.rulerOn));
      viewer.classList.toggle("measuring", state.rulerOn);
    });
    canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      zoomAt(event.deltaY < 0 ? 1.25 : 0.8, event.clientX, event.clientY);
    }, { passive: false });

    let drag = null;
    canvas.addEventListener("pointerdown", function (event) {
      canvas.setPointerCapture(event.pointerId);
      const point = toImage(event.clientX, event.clientY);
      if (state.rulerOn) {
        state.ruler = { x0: point.x, y0: point.y, x1: point.x, y1: point.y };
        drag = { mode: "ruler" };
      } else {
        drag = { mode: "pan", x: event.clientX, y: event.clientY, centreX: state.centreX, centreY: state.centreY };
      }
      draw();
    });
    canvas.addEventListener("pointermove", function (event) {
      if (!drag) return;
      if (drag.mode === "ruler") {
        const point = toImage(event.clientX, event.clientY);
        state.ruler.x1 = Math.min(Math.max(point.x, 0), imageWidth);
        state.ruler.y1 = Math.min(Math.max(point.y, 0), imageHeight);
      } else {
        const box = canvas.getBoundingClientRect();
        const perPixel = canvas.width / box.width / scale();
        state.centreX = drag.centreX - (event.clientX - drag.x) * perPixel;
        state.centreY = drag.centreY - (event.clientY - drag.y) * perPixel;
      }
      draw();
    });
    ["pointerup", "pointercancel"].forEach(function (name) {
      canvas.addEventListener(name, function () { drag = null; });
    });

    document.querySelectorAll(".layer-toggle, .layer-opacity").forEach(function (input) {
      const apply = function () {
        const opacity = document.getElementById("opacity-" + input.dataset.layer);
        const toggle = document.getElementById("toggle-" + input.dataset.layer);
        opacity.disabled = !toggle.checked;
        draw();
      };
      input.addEventListener("input", apply);
      input.addEventListener("change", apply);
    });
    window.addEventListener("resize", resize);
  }

  async function start() {
    bindControls();
    resize();
    const base = await window.BusLayers.loadImage(viewer.dataset.displayUrl);
    state.base = base;
    draw();
    const toggles = Array.from(document.querySelectorAll(".layer-toggle"));
    state.layers = toggles.map(function (toggle) {
      return {
        kind: toggle.dataset.layer,
        toggle: toggle,
        opacity: document.getElementById("opacity-" + toggle.dataset.layer),
        drawable: null,
      };
    });
    state.layers.forEach(function (layer) { layer.opacity.disabled = !layer.toggle.checked; });
    await Promise.all(state.layers.map(async function (layer) {
      const description = { source: layer.toggle.dataset.source, url: layer.toggle.dataset.url };
      try {
        layer.drawable = await window.BusLayers.loadLayer(description, base.naturalWidth, base.naturalHeight);
      } catch (error) {
        console.warn(error);
        layer.toggle.disabled = true;
      }
      layer.toggle.dataset.loaded = layer.drawable ? "true" : "false";
      draw();
    }));
    viewer.dataset.ready = "true";
  }

  start();
})();
