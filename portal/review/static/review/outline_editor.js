// Lesion outline editor: the reader paints the lesion mask (brush, eraser, undo) on a
// layer over the review viewer, following its zoom and pan. Self-contained: it reads
// the viewer's transform from the data attributes the viewer publishes on its canvas
// (data-centre, data-css-per-image-pixel) and writes the result into the review form's
// hidden outline_state / outline_mask inputs when the form is submitted. Nothing is
// sent before that.
//
// Keys, only while "Edit outline" is on (so they never reach other page shortcuts):
// B brush, E eraser, [ and ] brush size, Ctrl+Z or Z undo, Escape stop editing.
(function () {
  "use strict";
  const root = document.getElementById("outline-editor");
  const viewer = document.getElementById("viewer");
  const base = document.getElementById("viewer-canvas");
  if (!root || !viewer || !base) return;

  const width = Number(root.dataset.width);
  const height = Number(root.dataset.height);
  const stateInput = document.getElementById("id_outline_state");
  const maskInput = document.getElementById("id_outline_mask");
  const MAX_UNDO = 30;
  const FILL = "rgba(0, 229, 160, 0.38)";

  // The mask at the scan's pixel size: opaque white where the lesion is.
  const mask = document.createElement("canvas");
  mask.width = width;
  mask.height = height;
  const maskContext = mask.getContext("2d", { willReadFrequently: true });
  // The mask tinted for display.
  const tint = document.createElement("canvas");
  tint.width = width;
  tint.height = height;
  const tintContext = tint.getContext("2d");

  const layer = document.createElement("canvas");
  layer.className = "outline-editor-layer";
  layer.setAttribute("aria-hidden", "true");
  layer.style.position = "absolute";
  layer.style.pointerEvents = "none";
  viewer.appendChild(layer);
  const layerContext = layer.getContext("2d");

  const editor = {
    editing: false,
    tool: "brush",
    size: Number(root.dataset.brushSize || 12), // image pixels
    state: root.dataset.state || "model", // model | corrected | no_lesion
    changed: false,
    undo: [],
    stroke: null,
  };

  const controls = {
    toggle: root.querySelector("[data-outline=toggle]"),
    brush: root.querySelector("[data-outline=brush]"),
    eraser: root.querySelector("[data-outline=eraser]"),
    size: root.querySelector("[data-outline=size]"),
    undo: root.querySelector("[data-outline=undo]"),
    model: root.querySelector("[data-outline=model]"),
    none: root.querySelector("[data-outline=none]"),
    status: root.querySelector("[data-outline=status]"),
  };

  function lesionPixels() {
    const data = maskContext.getImageData(0, 0, width, height).data;
    let count = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] >= 128) count += 1;
    return count;
  }

  // Every pixel fully in or out, as the server reads it (alpha >= 128).
  function binarise() {
    const image = maskContext.getImageData(0, 0, width, height);
    const data = image.data;
    for (let i = 0; i < data.length; i += 4) {
      const inside = data[i + 3] >= 128;
      data[i] = data[i + 1] = data[i + 2] = 255;
      data[i + 3] = inside ? 255 : 0;
    }
    maskContext.putImageData(image, 0, 0);
  }

  function retint() {
    tintContext.globalCompositeOperation = "copy";
    tintContext.drawImage(mask, 0, 0);
    tintContext.globalCompositeOperation = "source-in";
    tintContext.fillStyle = FILL;
    tintContext.fillRect(0, 0, width, height);
    tintContext.globalCompositeOperation = "source-over";
  }

  // The viewer's transform: canvas pixels per image pixel and the image point at the centre.
  function transform() {
    const box = base.getBoundingClientRect();
    const perCss = Number(base.dataset.cssPerImagePixel || 0);
    const centre = (base.dataset.centre || width / 2 + "," + height / 2).split(",").map(Number);
    const ratio = box.width ? base.width / box.width : 1;
    return { box: box, scale: perCss * ratio, perCss: perCss, cx: centre[0], cy: centre[1] };
  }

  function draw() {
    layer.style.left = base.offsetLeft + "px";
    layer.style.top = base.offsetTop + "px";
    layer.style.width = base.style.width;
    layer.style.height = base.style.height;
    if (layer.width !== base.width) layer.width = base.width;
    if (layer.height !== base.height) layer.height = base.height;
    layerContext.setTransform(1, 0, 0, 1, 0, 0);
    layerContext.clearRect(0, 0, layer.width, layer.height);
    const t = transform();
    if (!t.scale) return;
    layerContext.setTransform(t.scale, 0, 0, t.scale, layer.width / 2 - t.cx * t.scale, layer.height / 2 - t.cy * t.scale);
    layerContext.imageSmoothingEnabled = false;
    layerContext.drawImage(tint, 0, 0);
  }

  function publish() {
    root.dataset.state = editor.state;
    root.dataset.changed = String(editor.changed);
    root.dataset.editing = String(editor.editing);
    root.dataset.tool = editor.tool;
    root.dataset.lesionPixels = String(lesionPixels());
    viewer.classList.toggle("outlining", editor.editing);
    controls.toggle.setAttribute("aria-pressed", String(editor.editing));
    controls.brush.setAttribute("aria-pressed", String(editor.tool === "brush"));
    controls.eraser.setAttribute("aria-pressed", String(editor.tool === "eraser"));
    controls.undo.disabled = editor.undo.length === 0;
    controls.size.value = String(editor.size);
    const words = {
      model: "The model's outline (not corrected).",
      corrected: "The reader's corrected outline.",
      no_lesion: "No lesion.",
    };
    controls.status.textContent = words[editor.state] + (editor.changed ? " Changed: kept when you save or sign." : "");
  }

  function refresh() {
    retint();
    draw();
    publish();
  }

  function remember() {
    editor.undo.push(maskContext.getImageData(0, 0, width, height));
    if (editor.undo.length > MAX_UNDO) editor.undo.shift();
  }

  function changed(state) {
    editor.state = state;
    editor.changed = true;
  }

  function undo() {
    const previous = editor.undo.pop();
    if (!previous) return;
    maskContext.putImageData(previous, 0, 0);
    changed(lesionPixels() ? "corrected" : "no_lesion");
    refresh();
  }

  function toImage(event) {
    const t = transform();
    return {
      x: t.cx + (event.clientX - t.box.left - t.box.width / 2) / t.perCss,
      y: t.cy + (event.clientY - t.box.top - t.box.height / 2) / t.perCss,
    };
  }

  function paint(from, to) {
    maskContext.save();
    maskContext.globalCompositeOperation = editor.tool === "eraser" ? "destination-out" : "source-over";
    maskContext.strokeStyle = maskContext.fillStyle = "#fff";
    maskContext.lineWidth = editor.size;
    maskContext.lineCap = maskContext.lineJoin = "round";
    maskContext.beginPath();
    maskContext.arc(to.x, to.y, editor.size / 2, 0, 2 * Math.PI);
    maskContext.fill();
    maskContext.beginPath();
    maskContext.moveTo(from.x, from.y);
    maskContext.lineTo(to.x, to.y);
    maskContext.stroke();
    maskContext.restore();
    retint();
    draw();
  }

  // Pointer events reach the viewer's own handlers (pan, ruler) only when not editing.
  viewer.addEventListener("pointerdown", function (event) {
    if (!editor.editing || event.button !== 0) return;
    event.stopPropagation();
    event.preventDefault();
    base.setPointerCapture(event.pointerId);
    remember();
    const point = toImage(event);
    editor.stroke = point;
    paint(point, point);
  }, true);
  viewer.addEventListener("pointermove", function (event) {
    if (!editor.editing) return;
    event.stopPropagation();
    if (!editor.stroke) return;
    const point = toImage(event);
    paint(editor.stroke, point);
    editor.stroke = point;
  }, true);
  ["pointerup", "pointercancel"].forEach(function (name) {
    viewer.addEventListener(name, function (event) {
      if (!editor.editing || !editor.stroke) return;
      event.stopPropagation();
      editor.stroke = null;
      binarise();
      changed(lesionPixels() ? "corrected" : "no_lesion");
      refresh();
    }, true);
  });

  function setEditing(on) {
    editor.editing = on;
    editor.stroke = null;
    publish();
  }

  controls.toggle.addEventListener("click", function () { setEditing(!editor.editing); });
  controls.brush.addEventListener("click", function () { editor.tool = "brush"; publish(); });
  controls.eraser.addEventListener("click", function () { editor.tool = "eraser"; publish(); });
  controls.size.addEventListener("input", function () { editor.size = Number(controls.size.value); publish(); });
  controls.undo.addEventListener("click", undo);
  controls.none.addEventListener("click", function () {
    remember();
    maskContext.clearRect(0, 0, width, height);
    changed("no_lesion");
    refresh();
  });
  controls.model.addEventListener("click", async function () {
    remember();
    await loadMask(root.dataset.modelUrl);
    changed(lesionPixels() ? "corrected" : "no_lesion");
    refresh();
  });

  window.addEventListener("keydown", function (event) {
    if (!editor.editing) return;
    const target = event.target;
    if (target && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName)) && target !== controls.size) return;
    const key = event.key;
    let handled = true;
    if ((key === "z" || key === "Z") && !event.altKey) undo();
    else if ((key === "b" || key === "B") && !event.ctrlKey && !event.metaKey) editor.tool = "brush";
    else if ((key === "e" || key === "E") && !event.ctrlKey && !event.metaKey) editor.tool = "eraser";
    else if (key === "[") editor.size = Math.max(Number(controls.size.min), editor.size - 2);
    else if (key === "]") editor.size = Math.min(Number(controls.size.max), editor.size + 2);
    else if (key === "Escape") editor.editing = false;
    else handled = false;
    if (handled) {
      event.preventDefault();
      event.stopImmediatePropagation();
      publish();
    }
  }, true);

  const form = stateInput ? stateInput.form : null;
  if (form) {
    form.addEventListener("submit", function () {
      if (!editor.changed) return; // the version keeps the outline before it
      stateInput.value = editor.state;
      maskInput.value = editor.state === "corrected" ? mask.toDataURL("image/png") : "";
    });
  }

  // A stored 1-bit (or grey) mask drawn into the editor's mask: white where >= 128.
  async function loadMask(url) {
    maskContext.clearRect(0, 0, width, height);
    if (!url) return;
    const response = await fetch(url, { credentials: "same-origin" });
    if (!response.ok) throw new Error("outline " + url + ": HTTP " + response.status);
    const bitmap = await createImageBitmap(await response.blob());
    maskContext.drawImage(bitmap, 0, 0, width, height);
    const image = maskContext.getImageData(0, 0, width, height);
    const data = image.data;
    for (let i = 0; i < data.length; i += 4) {
      const inside = data[i + 3] >= 128 && data[i] >= 128;
      data[i] = data[i + 1] = data[i + 2] = 255;
      data[i + 3] = inside ? 255 : 0;
    }
    maskContext.putImageData(image, 0, 0);
  }

  // For tests and the page: the mask as 0/1 per pixel, row by row.
  window.BusOutlineEditor = {
    bits: function () {
      const data = maskContext.getImageData(0, 0, width, height).data;
      const bits = new Uint8Array(width * height);
      for (let i = 0; i < bits.length; i += 1) bits[i] = data[4 * i + 3] >= 128 ? 1 : 0;
      return bits;
    },
    state: function () { return editor.state; },
  };

  new MutationObserver(draw).observe(base, {
    attributes: true,
    attributeFilter: ["data-centre", "data-zoom", "data-css-per-image-pixel", "width", "height", "style"],
  });
  window.addEventListener("resize", draw);

  (async function start() {
    const initial = editor.state === "corrected" ? root.dataset.reviewUrl : editor.state === "model" ? root.dataset.modelUrl : "";
    try {
      await loadMask(initial);
    } catch (error) {
      console.warn(error);
    }
    refresh();
    root.dataset.ready = "true";
  })();
})();
