// Keyboard shortcuts of the reading pages (worklist and review page), as the page lists
// them. A link or button with data-key="x" is followed or pressed by the key x; on the
// review page the keys also fill the decision form. No key acts while the reader types in
// a text field (the note) or a list has the focus, nor with Ctrl, Alt or Meta held.
(function () {
  "use strict";
  const form = document.getElementById("review-form");
  const modelLabel = form ? form.dataset.modelLabel : "";
  const CORRECT = { n: "normal", b: "benign", m: "malignant" };
  const FOURS = ["4", "4A", "4B", "4C"];
  const oddsNode = document.getElementById("birads-at-odds");
  const atOdds = oddsNode ? JSON.parse(oddsNode.textContent) : {};

  function typing(target) {
    if (!target || !target.closest) return false;
    if (target.isContentEditable) return true;
    const field = target.closest("textarea, select, input");
    if (!field) return false;
    // Choosing with the keyboard (radios, checkboxes, sliders, buttons) is not typing.
    return field.tagName !== "INPUT" || !["radio", "checkbox", "range", "button", "submit"].includes(field.type);
  }

  function field(name) {
    return form ? form.elements.namedItem(name) : null;
  }

  function changed(element) {
    element.dispatchEvent(new Event("change", { bubbles: true }));
  }

  function agree(yes) {
    const radio = form && form.querySelector("input[name=agrees_with_model][value=" + (yes ? "yes" : "no") + "]");
    if (!radio) return false;
    radio.checked = true;
    changed(radio);
    return true;
  }

  // Correcting to the model's own label is agreeing with it.
  function correctTo(label) {
    const select = field("label");
    if (!select) return false;
    if (label === modelLabel) return agree(true);
    agree(false);
    select.value = label;
    changed(select);
    return true;
  }

  // 0-6 choose a category; 4 pressed again steps through 4A, 4B, 4C and back to 4.
  function chooseBirads(key) {
    const select = field("birads");
    if (!select) return false;
    let value = key;
    if (key === "4" && FOURS.includes(select.value)) {
      value = FOURS[(FOURS.indexOf(select.value) + 1) % FOURS.length];
    }
    if (!Array.from(select.options).some((option) => option.value === value)) return false;
    select.value = value;
    changed(select);
    return true;
  }

  function toggleOverlays() {
    const toggles = Array.from(document.querySelectorAll(".layer-toggle:not(:disabled)"));
    if (!toggles.length) return false;
    const show = !toggles.some((toggle) => toggle.checked);
    toggles.forEach((toggle) => {
      toggle.checked = show;
      changed(toggle);
    });
    return true;
  }

  function press(key) {
    const target = document.querySelector('[data-key="' + key + '"]');
    if (!target) return false;
    target.click();
    return true;
  }

  function sign() {
    const button = document.getElementById("sign-next");
    if (!form || !button || button.disabled) return false;
    form.requestSubmit(button);
    return true;
  }

  function act(key) {
    if (key === "a") return agree(true);
    if (key in CORRECT) return form ? correctTo(CORRECT[key]) : press(key);
    if (/^[0-6]$/.test(key)) return chooseBirads(key);
    if (key === "s") return sign();
    if (key === "o") return toggleOverlays();
    if (key === "e") {
      const note = field("note");
      if (note) note.focus();
      return Boolean(note);
    }
    return press(key);
  }

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && typing(event.target)) {
      event.target.blur();
      return;
    }
    if (event.defaultPrevented || event.isComposing || event.ctrlKey || event.altKey || event.metaKey) return;
    if (typing(event.target)) return;
    if (act(event.key.length === 1 ? event.key.toLowerCase() : event.key)) event.preventDefault();
  });

  // A warning, never a block, when the label read and the BI-RADS category disagree
  // (the rule is the server's: portal.review.services.birads_at_odds).
  function readLabel() {
    const agrees = form.querySelector("input[name=agrees_with_model]:checked");
    return agrees && agrees.value === "no" ? field("label").value : modelLabel;
  }

  function checkBirads() {
    const warning = document.getElementById("birads-warning");
    if (!warning) return;
    const label = readLabel();
    const birads = field("birads").value;
    const odd = birads && (atOdds[label] || []).includes(birads);
    warning.hidden = !odd;
    warning.textContent = odd ? "BI-RADS " + birads + " is unusual for a reading of " + label + ": check the category or say why in the note. You can still sign." : "";
  }

  if (form) {
    form.addEventListener("change", checkBirads);
    checkBirads();
  }
})();
