// Scan review page: show or hide each overlay layer and set its opacity, no reload.
(function () {
  "use strict";
  function layer(kind) {
    return document.getElementById("layer-" + kind);
  }
  function apply(kind) {
    const image = layer(kind);
    const toggle = document.getElementById("toggle-" + kind);
    const opacity = document.getElementById("opacity-" + kind);
    if (!image || !toggle || !opacity) return;
    image.hidden = !toggle.checked;
    image.style.opacity = String(Number(opacity.value) / 100);
    opacity.disabled = !toggle.checked;
  }
  document.querySelectorAll(".layer-toggle, .layer-opacity").forEach(function (input) {
    input.addEventListener("input", function () { apply(input.dataset.layer); });
    input.addEventListener("change", function () { apply(input.dataset.layer); });
    apply(input.dataset.layer);
  });
})();
