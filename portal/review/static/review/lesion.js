// The review page's lesion control: sends the form with fetch and redraws the select
// from the answer (the study's lesions, each with its image count), so a draft being
// written in the decision form is not lost to a page load. Without this script the form
// posts as any form does and the page comes back with a message.
(function () {
  "use strict";
  const form = document.getElementById("lesion-form");
  if (!form || !window.fetch) return;
  const select = document.getElementById("lesion-choice");
  const status = document.getElementById("lesion-status");
  const button = document.getElementById("lesion-save");

  function option(value, text, selected) {
    const node = document.createElement("option");
    node.value = value;
    node.textContent = text;
    node.selected = selected;
    return node;
  }

  function redraw(answer) {
    const options = [option("", "none", answer.lesion === null)];
    answer.lesions.forEach(function (lesion) {
      const images = lesion.images + (lesion.images === 1 ? " image" : " images");
      options.push(option(String(lesion.id), lesion.label + " (" + images + ")", lesion.id === answer.lesion));
    });
    options.push(option("new", "new lesion", false));
    select.replaceChildren.apply(select, options);
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    button.disabled = true;
    status.textContent = "Saving…";
    fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { Accept: "application/json" },
      credentials: "same-origin",
    })
      .then(function (response) {
        return response.json().then(
          function (answer) {
            redraw(answer);
            status.textContent = answer.message;
          },
          function () {
            // Not the view's answer (signed out, refused): nothing was changed.
            status.textContent = "Not saved (" + response.status + "): reload the page and try again.";
          }
        );
      })
      .catch(function () {
        status.textContent = "Not saved: the portal did not answer. Try again.";
      })
      .finally(function () {
        button.disabled = false;
      });
  });
})();
