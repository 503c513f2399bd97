// Result layers drawn in the browser from what the worker stored: the scan's display
// copy, grey heatmaps coloured here with the colour map ml.render uses for downloads,
// and the lesion outline layer. Used by the review viewer and the study page.
(function () {
  "use strict";

  // ml/render.py's colour map: blue (0) -> cyan -> yellow -> red (1), and a blend
  // weight rising with the square root of the level so cold regions stay see-through.
  const STOPS = [0.0, 0.35, 0.65, 1.0];
  const COLOURS = [[0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0]];
  const LUT = new Uint8ClampedArray(256 * 4);
  for (let level = 0; level < 256; level += 1) {
    const x = level / 255;
    let i = 0;
    while (i < STOPS.length - 2 && x > STOPS[i + 1]) i += 1;
    const t = (x - STOPS[i]) / (STOPS[i + 1] - STOPS[i]);
    for (let c = 0; c < 3; c += 1) {
      LUT[level * 4 + c] = COLOURS[i][c] + (COLOURS[i + 1][c] - COLOURS[i][c]) * t;
    }
    LUT[level * 4 + 3] = Math.round(255 * Math.sqrt(x));
  }
  // The opacity ml.render blends downloads with: a slider at this value matches them.
  const HEATMAP_OPACITY = 0.5;

  function loadImage(url) {
    return new Promise(function (resolve, reject) {
      const image = new Image();
      image.decoding = "async";
      image.onload = function () { resolve(image); };
      image.onerror = function () { reject(new Error("could not load " + url)); };
      image.src = url;
    });
  }

  // A grey heatmap (any size) stretched over width x height, coloured: an RGBA canvas.
  function colourise(grey, width, height) {
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.imageSmoothingEnabled = true;
    context.imageSmoothingQuality = "high";
    context.drawImage(grey, 0, 0, width, height);
    const pixels = context.getImageData(0, 0, width, height);
    const data = pixels.data;
    for (let p = 0; p < data.length; p += 4) {
      const level = data[p] * 4;
      data[p] = LUT[level];
      data[p + 1] = LUT[level + 1];
      data[p + 2] = LUT[level + 2];
      data[p + 3] = LUT[level + 3];
    }
    context.putImageData(pixels, 0, 0);
    return canvas;
  }

  // Loads a layer described by the server ({kind, source, url}) into something drawable
  // over a scan whose display copy is width x height.
  async function loadLayer(layer, width, height) {
    const image = await loadImage(layer.url);
    return layer.source === "heatmap" ? colourise(image, width, height) : image;
  }

  window.BusLayers = { loadImage: loadImage, loadLayer: loadLayer, colourise: colourise, HEATMAP_OPACITY: HEATMAP_OPACITY };
})();
