// The operator console's behaviour: navigation state, actions on the core API (with the
// session cookie; the browser adds Origin), uploads with progress, the live event stream.
// Every value shown is set as text, never as markup.
(() => {
  "use strict";
  const body = document.body;
  const signIn = body.dataset.signIn;
  const recent = [];

  function errorText(status, text) {
    try {
      const error = JSON.parse(text).error;
      if (error && error.code) return `${error.code}: ${error.message}`;
    } catch (_) { /* not the runtime's envelope */ }
    return `HTTP ${status}`;
  }

  function show(id, text, ok) {
    const box = document.getElementById(id);
    if (!box) return;
    box.textContent = text;
    box.className = `result ${ok ? "ok" : "bad"}`;
  }

  function changed() { body.dispatchEvent(new CustomEvent("cy:changed")); }

  function toSignIn() {
    window.location.assign(`${signIn}?next=${encodeURIComponent(location.pathname + location.search)}`);
  }

  function markCurrent() {
    const here = location.pathname;
    for (const link of document.querySelectorAll("#sidebar a")) {
      const page = link.getAttribute("href");
      if (page === here) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  // Actions: a button names its method and URL, a result region, and a confirmation.
  async function act(button) {
    if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
    button.disabled = true;
    try {
      const answer = await fetch(button.dataset.url, {
        method: button.dataset.method, credentials: "same-origin",
        headers: {Accept: "application/json"},
      });
      if (answer.status === 401) return toSignIn();
      const text = await answer.text();
      if (answer.ok) show(button.dataset.result, button.dataset.done || "Done", true);
      else show(button.dataset.result, errorText(answer.status, text), false);
      changed();
    } catch (error) {
      show(button.dataset.result, String(error), false);
    } finally {
      button.disabled = false;
    }
  }

  // Uploads: multipart `file`, through XMLHttpRequest for its progress events.
  function upload(form) {
    const input = form.querySelector("input[type=file]");
    const bar = form.querySelector("progress");
    const button = form.querySelector("button[type=submit]");
    if (!input.files.length) return show(form.dataset.result, "Choose an archive first", false);
    const data = new FormData();
    data.append("file", input.files[0]);
    const overwrite = form.querySelector("input[name=overwrite]");
    const url = form.dataset.upload + (overwrite && overwrite.checked ? "?overwrite=true" : "");
    const request = new XMLHttpRequest();
    request.open("POST", url);
    request.setRequestHeader("Accept", "application/json");
    bar.hidden = false; bar.value = 0; button.disabled = true;
    show(form.dataset.result, `Uploading ${input.files[0].name}…`, true);
    request.upload.addEventListener("progress", (e) => {
      if (e.lengthComputable) bar.value = Math.round((e.loaded / e.total) * 100);
    });
    request.addEventListener("loadend", () => {
      button.disabled = false;
      if (request.status === 401) return toSignIn();
      if (request.status >= 200 && request.status < 300) {
        bar.value = 100;
        const item = Object.values(JSON.parse(request.responseText).data || {})[0] || {};
        show(form.dataset.result, `Installed ${item.name} ${item.version}`, true);
        form.reset();
        changed();
        body.dispatchEvent(new CustomEvent("cy:generation"));
      } else {
        show(form.dataset.result, request.status ? errorText(request.status, request.responseText) : "The upload failed: no answer", false);
      }
    });
    request.send(data);
  }

  async function createKey(form) {
    const fields = new FormData(form);
    const payload = {name: fields.get("name"), roles: [fields.get("role")]};
    if (fields.get("expiresIn")) payload.expiresIn = fields.get("expiresIn");
    const answer = await fetch(form.dataset.createKey, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", Accept: "application/json"},
      body: JSON.stringify(payload),
    });
    if (answer.status === 401) return toSignIn();
    const text = await answer.text();
    if (!answer.ok) return show(form.dataset.result, errorText(answer.status, text), false);
    const key = JSON.parse(text);
    show(form.dataset.result, `Created ${key.id} (${key.name})`, true);
    const box = document.getElementById("new-secret");
    box.querySelector("[data-key-id]").textContent = key.id;
    const value = document.getElementById("secret-value");
    value.value = key.secret;
    box.hidden = false;
    value.focus(); value.select();
    form.reset();
    changed();
  }

  async function copy(button) {
    const field = document.getElementById(button.dataset.copy);
    try {
      await navigator.clipboard.writeText(field.value);
    } catch (_) {
      field.select(); document.execCommand("copy");
    }
    button.textContent = "Copied";
  }

  document.addEventListener("click", (event) => {
    // A link inside a plugin's page opens its target inside the shell too.
    const link = event.target.closest(".plugin-page a[href]");
    if (link && !link.target && !link.hasAttribute("download") && !event.ctrlKey && !event.metaKey) {
      const url = new URL(link.href);
      if (url.origin === location.origin && !url.pathname.startsWith("/api/")) {
        event.preventDefault();
        window.location.assign(`/console/open${url.pathname}${url.search}`);
        return;
      }
    }
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.method) act(button);
    else if (button.dataset.copy) copy(button);
    else if (button.classList.contains("menu-toggle")) {
      const open = document.getElementById("sidebar").classList.toggle("open");
      button.setAttribute("aria-expanded", String(open));
    }
  });

  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (form.dataset.upload) { event.preventDefault(); upload(form); }
    else if (form.dataset.createKey) { event.preventDefault(); createKey(form); }
  });

  for (const kind of ["dragenter", "dragover"]) {
    document.addEventListener(kind, (event) => {
      const zone = event.target.closest && event.target.closest(".drop");
      if (!zone) return;
      event.preventDefault();
      zone.classList.add("over");
    });
  }
  document.addEventListener("dragleave", (event) => {
    const zone = event.target.closest && event.target.closest(".drop");
    if (zone) zone.classList.remove("over");
  });
  document.addEventListener("drop", (event) => {
    const zone = event.target.closest && event.target.closest(".drop");
    if (!zone) return;
    event.preventDefault();
    zone.classList.remove("over");
    const form = zone.closest("form");
    const input = form.querySelector("input[type=file]");
    input.files = event.dataTransfer.files;
    upload(form);
  });

  // htmx: errors become a message in place; a lost session goes to the sign-in page.
  document.addEventListener("htmx:beforeSwap", (event) => {
    const detail = event.detail;
    const status = detail.xhr.status;
    if (status < 400) return;
    if (status === 401) { event.preventDefault(); return toSignIn(); }
    const message = document.createElement("p");
    message.className = "alert";
    message.setAttribute("role", "alert");
    message.textContent = errorText(status, detail.xhr.responseText);
    detail.shouldSwap = true;
    detail.isError = false;
    detail.serverResponse = detail.target.id === "content"
      ? `<main id="content" tabindex="-1">${message.outerHTML}</main>` : message.outerHTML;
  });

  document.addEventListener("htmx:afterSettle", (event) => {
    markCurrent();
    renderEvents();
    if (event.detail.boosted) {
      const content = document.getElementById("content");
      if (content) content.focus({preventScroll: true});
      document.getElementById("sidebar").classList.remove("open");
    }
  });
  window.addEventListener("popstate", () => setTimeout(markCurrent, 0));

  // The event stream: live events on the overview, the sidebar drawn again after a reload.
  function renderEvents() {
    const list = document.getElementById("events");
    if (!list) return;
    list.replaceChildren(...recent.map((event) => {
      const item = document.createElement("li");
      const when = typeof event.time === "number" ? new Date(event.time * 1000).toISOString().slice(11, 19) : "";
      item.textContent = `${when} ${event.topic} ${JSON.stringify(event.data)}`;
      return item;
    }));
  }

  if (body.dataset.stream === "on" && window.EventSource) {
    let pending = null;
    const source = new EventSource("/api/stream?topics=courtyard.*&named=false");
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      recent.unshift(event);
      recent.length = Math.min(recent.length, 50);
      renderEvents();
      if (event.topic.startsWith("courtyard.generation.") || event.topic.startsWith("courtyard.plugin.")) {
        clearTimeout(pending);
        pending = setTimeout(() => {
          body.dispatchEvent(new CustomEvent("cy:generation"));
          changed();
        }, 100);
      }
    };
  }

  markCurrent();
})();
