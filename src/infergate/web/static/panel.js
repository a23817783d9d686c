/* infergate panel: small enhancements; every page works without them. */
"use strict";
(function () {
  // Copy buttons: data-copy="#selector" copies that element's value or text.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = "value" in source && source.tagName === "INPUT" ? source.value : source.textContent;
    var done = function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { selectIn(source); });
    } else {
      selectIn(source);  // plain HTTP: the Clipboard API is unavailable; select so Ctrl+C works
      try { document.execCommand("copy"); done(); } catch (e) { /* selected for the user */ }
    }
  });

  function selectIn(el) {
    if (el.select) { el.focus(); el.select(); return; }
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  // Typed confirmation: the destructive button stays disabled until the key's name is typed
  // (the server checks it too).
  document.querySelectorAll("[data-confirm-form]").forEach(function (form) {
    var input = form.querySelector("[data-expected]");
    var submit = form.querySelector("[data-confirm-submit]");
    if (!input || !submit) return;
    var sync = function () { submit.disabled = input.value !== input.getAttribute("data-expected"); };
    input.addEventListener("input", sync);
    sync();
  });

  // Close an open "…" menu with Escape, returning focus to its button.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Escape") return;
    document.querySelectorAll("details.menu[open]").forEach(function (menu) {
      menu.removeAttribute("open");
      menu.querySelector("summary").focus();
    });
  });

  // The secret is shown once: select it so it can be copied right away.
  var secret = document.getElementById("secret-value");
  if (secret) { secret.focus(); secret.select(); }
})();
