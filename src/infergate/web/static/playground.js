/* Models page: playground tabs, streamed chat, speech and image, snippet model names. */
"use strict";
(function () {
  var csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");

  function post(path, body, signal) {
    return fetch(path, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
      credentials: "same-origin",
      signal: signal,
    });
  }

  async function errorText(response) {
    var text = await response.text();
    try { return JSON.parse(text).error.message; } catch (e) { /* not JSON */ }
    if (response.status === 403) return "Your session has ended or the page is stale: reload and try again.";
    return "HTTP " + response.status;
  }

  // Tabs (WAI-ARIA tabs pattern: arrow keys move between tabs).
  var tabs = Array.prototype.slice.call(document.querySelectorAll('.tabs [role="tab"]'));
  function select(tab) {
    tabs.forEach(function (t) {
      var on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    });
    // the code examples follow the tab: chat, speech or image requests
    var name = tab.id.replace("tab-", "");
    document.querySelectorAll(".snippet-set").forEach(function (set) {
      set.hidden = set.getAttribute("data-tab") !== name;
    });
    tab.focus();
  }
  tabs.forEach(function (tab, i) {
    tab.addEventListener("click", function () { select(tab); });
    tab.addEventListener("keydown", function (e) {
      if (e.key === "ArrowRight") select(tabs[(i + 1) % tabs.length]);
      if (e.key === "ArrowLeft") select(tabs[(i - 1 + tabs.length) % tabs.length]);
    });
  });

  // Snippets follow the model chosen in each tab.
  [["chat", "chat-model"], ["speech", "speech-model"], ["image", "image-model"]].forEach(function (pair) {
    var chooser = document.getElementById(pair[1]);
    if (!chooser) return;
    chooser.addEventListener("change", function () {
      document.querySelectorAll('.snippet-set[data-tab="' + pair[0] + '"] .snippet-model').forEach(function (el) {
        el.textContent = chooser.value;
      });
    });
  });
  var chatModel = document.getElementById("chat-model");

  // The image model's sizes (the document's squares and its catalog sizes), its default selected.
  var imageModel = document.getElementById("image-model");
  var imageSize = document.getElementById("image-size");
  if (imageModel && imageSize) {
    imageModel.addEventListener("change", function () {
      var option = imageModel.selectedOptions[0];
      var fallback = option.getAttribute("data-default");
      imageSize.replaceChildren();
      option.getAttribute("data-sizes").split(" ").forEach(function (size) {
        var item = document.createElement("option");
        item.textContent = size;
        item.selected = size === fallback;
        imageSize.appendChild(item);
      });
    });
  }

  // Chat: read the server-sent events as they arrive.
  var chatForm = document.getElementById("chat-form");
  if (chatForm) {
    var output = document.getElementById("chat-output");
    var usage = document.getElementById("chat-usage");
    var send = document.getElementById("chat-send");
    var stop = document.getElementById("chat-stop");
    var controller = null;
    stop.addEventListener("click", function () { if (controller) controller.abort(); });
    chatForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      var messages = [];
      var system = document.getElementById("chat-system").value.trim();
      if (system) messages.push({ role: "system", content: system });
      messages.push({ role: "user", content: document.getElementById("chat-input").value });
      output.textContent = "";
      usage.textContent = "Waiting for the model…";
      send.disabled = true; stop.disabled = false;
      controller = new AbortController();
      try {
        var response = await post("/panel/playground/chat", {
          model: chatModel.value,
          messages: messages,
          max_tokens: parseInt(document.getElementById("chat-max").value, 10) || 128,
        }, controller.signal);
        if (!response.ok) { usage.textContent = "Error: " + (await errorText(response)); return; }
        usage.textContent = "Streaming…";
        var reader = response.body.getReader();
        var decoder = new TextDecoder();
        var buffer = "";
        for (;;) {
          var part = await reader.read();
          if (part.done) break;
          buffer += decoder.decode(part.value, { stream: true });
          var events = buffer.split("\n\n");
          buffer = events.pop();
          events.forEach(function (raw) { handle(raw); });
        }
        if (usage.textContent === "Streaming…") usage.textContent = "Done.";
      } catch (e) {
        usage.textContent = e.name === "AbortError" ? "Stopped." : "Error: " + e.message;
      } finally {
        send.disabled = false; stop.disabled = true; controller = null;
      }
    });

    function handle(raw) {
      var line = raw.split("\n").filter(function (l) { return l.indexOf("data: ") === 0; }).map(function (l) { return l.slice(6); }).join("");
      if (!line || line === "[DONE]") return;
      var data;
      try { data = JSON.parse(line); } catch (e) { return; }
      if (data.error) { usage.textContent = "Error: " + data.error.message; return; }
      (data.choices || []).forEach(function (c) {
        if (c.delta && typeof c.delta.content === "string") output.textContent += c.delta.content;
      });
      if (data.usage) {
        usage.textContent = data.usage.prompt_tokens + " prompt + " + data.usage.completion_tokens +
          " completion tokens, billed to the panel playground key.";
      }
    }
  }

  // Text to speech: the answer is a WAV file played from a blob: URL.
  var speechForm = document.getElementById("speech-form");
  if (speechForm) {
    speechForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      var status = document.getElementById("speech-status");
      var audio = document.getElementById("speech-audio");
      status.textContent = "Synthesizing…";
      var response = await post("/panel/playground/speech", {
        model: document.getElementById("speech-model").value,
        input: document.getElementById("speech-input").value,
      });
      if (!response.ok) { status.textContent = "Error: " + (await errorText(response)); return; }
      var blob = await response.blob();
      if (audio.src) URL.revokeObjectURL(audio.src);
      audio.src = URL.createObjectURL(blob);
      audio.hidden = false;
      status.textContent = "Ready: " + Math.round(blob.size / 1024) + " KiB of audio.";
    });
  }

  // Text to image: the answer carries the image as base64 PNG.
  var imageForm = document.getElementById("image-form");
  if (imageForm) {
    imageForm.addEventListener("submit", async function (event) {
      event.preventDefault();
      var status = document.getElementById("image-status");
      var img = document.getElementById("image-result");
      status.textContent = "Generating…";
      var response = await post("/panel/playground/image", {
        model: document.getElementById("image-model").value,
        prompt: document.getElementById("image-input").value,
        size: imageSize ? imageSize.value : undefined,
      });
      if (!response.ok) { status.textContent = "Error: " + (await errorText(response)); return; }
      var data = await response.json();
      var item = (data.data || [])[0] || {};
      img.src = item.b64_json ? "data:image/png;base64," + item.b64_json : item.url;
      img.alt = "Generated image: " + document.getElementById("image-input").value;
      img.hidden = false;
      status.textContent = "Done.";
    });
  }
})();
