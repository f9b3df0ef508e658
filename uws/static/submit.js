// The submit form: refuse a file over the limit before sending anything,
// then send with a progress bar (bytes, rate, elapsed, time left) and go
// to the job's page.  Without this script the form posts as it is.
"use strict";
(function () {
  const form = document.getElementById("submit");
  const limit = Number(document.getElementById("limit").dataset.bytes);
  const box = document.getElementById("upload");
  const bar = document.getElementById("progress");
  const text = document.getElementById("progress-text");
  const problem = document.getElementById("problem");
  const send = document.getElementById("send");

  function bytes(n) {
    const units = [["GB", 1e9], ["MB", 1e6], ["kB", 1e3]];
    for (const [unit, scale] of units) {
      if (n >= scale) return (n / scale).toFixed(1) + " " + unit;
    }
    return n + " bytes";
  }
  function duration(s) {
    if (!isFinite(s)) return "…";
    if (s < 10) return s.toFixed(1) + " s";
    s = Math.round(s);
    return s >= 60 ? Math.floor(s / 60) + " min " + (s % 60) + " s" : s + " s";
  }
  function say(message) {
    problem.textContent = message;
    problem.hidden = false;
  }
  function tooLarge() {
    for (const input of form.querySelectorAll("input[type=file]")) {
      const file = input.files[0];
      if (file && file.size > limit) {
        return input.labels[0].textContent + ": " + file.name + " is " +
          bytes(file.size) + ", over the limit of " + bytes(limit) +
          ": it was not sent.";
      }
    }
    return null;
  }
  for (const input of form.querySelectorAll("input[type=file]")) {
    input.addEventListener("change", function () {
      const refusal = tooLarge();
      problem.hidden = refusal === null;
      if (refusal) say(refusal);
    });
  }
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    problem.hidden = true;
    const refusal = tooLarge();
    if (refusal) { say(refusal); return; }
    const image = document.getElementById("image").files[0];
    const url = document.getElementById("image_url").value.trim();
    if (!image && !url) { say("Choose a FITS file or give its URL."); return; }
    const data = new FormData(form);
    for (const input of form.querySelectorAll("input[type=file]")) {
      if (!input.files.length) data.delete(input.name);
    }
    const xhr = new XMLHttpRequest();
    const started = performance.now();
    xhr.upload.addEventListener("progress", function (e) {
      if (!e.lengthComputable) return;
      const elapsed = (performance.now() - started) / 1000;
      const rate = e.loaded / Math.max(elapsed, 1e-3);
      bar.max = e.total;
      bar.value = e.loaded;
      text.textContent = bytes(e.loaded) + " of " + bytes(e.total) +
        " sent, " + bytes(rate) + "/s, " + duration(elapsed) + " elapsed, " +
        duration((e.total - e.loaded) / rate) + " left";
    });
    xhr.upload.addEventListener("load", function () {
      text.textContent += " — checking the file…";
    });
    xhr.addEventListener("load", function () {
      if (xhr.status === 200 && xhr.responseURL.indexOf("/ui/jobs/") >= 0) {
        window.location.assign(xhr.responseURL);
        return;
      }
      send.disabled = false;
      say("The job was not created: " + xhr.responseText.trim());
    });
    xhr.addEventListener("error", function () {
      send.disabled = false;
      say("The upload failed: the connection to the service was lost.");
    });
    send.disabled = true;
    box.hidden = false;
    xhr.open("POST", form.action);
    xhr.send(data);
  });
})();
