// Shared helpers of the tagpoll pages. Vanilla JS, no build step.
"use strict";

const T = {
  // A new element with an optional class and text.
  el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  },

  // Follows a Server-Sent Events stream and never gives up: EventSource
  // retries by itself after a dropped connection, this also restarts it
  // when the server refused it (readyState CLOSED) or when nothing, not
  // even the server's 5 s ping, arrived for 15 s (a silently dead link).
  // On every (re)connect the server sends current state first, so the page
  // catches up without a reload.
  live(url, handlers, onState) {
    let es = null;
    let timer = null;
    let last = Date.now();
    const open = () => {
      last = Date.now();
      es = new EventSource(url);
      for (const [name, fn] of Object.entries(handlers)) {
        es.addEventListener(name, ev => { last = Date.now(); fn(JSON.parse(ev.data)); });
      }
      es.addEventListener("ping", () => { last = Date.now(); });
      es.onopen = () => { last = Date.now(); onState(true); };
      es.onerror = () => {
        onState(false);
        if (es.readyState === EventSource.CLOSED) restart(2000);
      };
    };
    const restart = delay => {
      if (es) es.close();
      clearTimeout(timer);
      timer = setTimeout(open, delay);
    };
    setInterval(() => {
      if (es && es.readyState === EventSource.OPEN && Date.now() - last > 15000) {
        onState(false);
        restart(0);
      }
    }, 3000);
    open();
  },

  // Shows "live" or "reconnecting…" in a status element.
  statusShower(el) {
    return ok => {
      el.textContent = ok ? "live" : "reconnecting…";
      el.classList.toggle("down", !ok);
    };
  },

  // A query parameter, or the default.
  param(name, dflt) {
    const v = new URLSearchParams(location.search).get(name);
    return v === null ? dflt : v;
  },
};
