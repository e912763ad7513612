// polymodal web page: the controls a captioner was trained with (docs/control.md): a length slider and
// click-on-the-image to focus. Loaded before app.js, whose `$`, `state` and `caption` these call.
"use strict";

const LENGTHS = ["short", "normal", "detailed"];

function setupTrainedControls(controls) {  // only what the loaded captioner was trained with
  state.controls = controls;
  const length = $("length");
  $("length-field").hidden = length.disabled = !controls.includes("length");
  length.addEventListener("input", () => { $("length-out").textContent = LENGTHS[length.value]; });
  length.addEventListener("change", () => caption());
  $("focus-hint").hidden = !controls.includes("focus");
  $("focus-clear").addEventListener("click", () => { state.focus = null; $("focus-clear").hidden = true; caption(); });
  $("drop").addEventListener("click", (e) => {
    if (!controls.includes("focus") || $("drop").dataset.empty === "true") return;
    const base = $("base"), rect = base.getBoundingClientRect();
    // the model sees the centre square of the image: the point in that square, in [0, 1]
    const w = base.naturalWidth, h = base.naturalHeight, side = Math.min(w, h);
    const x = ((e.clientX - rect.left) / rect.width * w - (w - side) / 2) / side;
    const y = ((e.clientY - rect.top) / rect.height * h - (h - side) / 2) / side;
    if (x < 0 || x > 1 || y < 0 || y > 1) return;
    state.focus = [x, y];
    $("focus-clear").hidden = false;
    caption();
  });
}

function appendTrainedControls(form) {
  if (state.focus) form.append("focus_point", state.focus.map((v) => v.toFixed(3)).join(","));
  else if (state.controls?.includes("length") && LENGTHS[$("length").value] !== "normal") {
    form.append("length", LENGTHS[$("length").value]);  // normal: the plain caption, as without the slider
  }
}
