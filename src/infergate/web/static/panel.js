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

  // "…" menus float above the page (position: fixed), so the table's scroll box cannot clip them;
  // they open upward when there is no room below. Only one is open at a time.
  function place(menu) {
    var list = menu.querySelector("ul");
    var anchor = menu.querySelector("summary").getBoundingClientRect();
    list.classList.add("floating");
    list.style.left = "0px";  // measure its natural width, not one squeezed by the last placement
    var h = list.offsetHeight, w = list.offsetWidth, gap = 4;
    var top = anchor.bottom + gap;
    if (top + h > window.innerHeight - gap) {
      top = anchor.top - h - gap >= gap ? anchor.top - h - gap : Math.max(gap, window.innerHeight - h - gap);
    }
    var left = Math.min(Math.max(gap, anchor.right - w), window.innerWidth - w - gap);
    list.style.top = top + "px";
    list.style.left = Math.max(gap, left) + "px";
  }
  function openMenus() { return document.querySelectorAll("details.menu[open]"); }
  document.addEventListener("toggle", function (event) {
    var menu = event.target;
    if (!menu.matches || !menu.matches("details.menu") || !menu.open) return;
    openMenus().forEach(function (other) { if (other !== menu) other.removeAttribute("open"); });
    place(menu);
  }, true);
  var reposition = function () { openMenus().forEach(place); };
  window.addEventListener("resize", reposition);
  document.addEventListener("scroll", reposition, true);  // the page or the table's own scroll box
  document.addEventListener("click", function (event) {
    openMenus().forEach(function (menu) { if (!menu.contains(event.target)) menu.removeAttribute("open"); });
  });

  // The secret is shown once: select it so it can be copied right away.
  var secret = document.getElementById("secret-value");
  if (secret) { secret.focus(); secret.select(); }
})();
