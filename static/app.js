// Backstop's panel script: CSRF header for htmx, the viewer's time zone, the live-connection
// indicator, polling while the live socket is down (the alert count: always). Everything else
// lives in markup.
(function () {
  "use strict";

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  function rememberTimeZone() {
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
    // IANA names ("Asia/Tehran", "America/Port-au-Prince") are cookie-safe as they are;
    // written raw so that the server reads the zone itself, not a %-encoded form of it.
    if (!/^[A-Za-z0-9_+\/-]+$/.test(zone)) return;
    if (!document.cookie.split("; ").includes("tz=" + zone)) {
      document.cookie = "tz=" + zone + "; path=/; max-age=31536000; samesite=lax";
    }
  }

  let live = false;

  function showMode(isLive) {
    live = isLive;
    const status = document.getElementById("live-status");
    if (!status) return;
    status.dataset.state = isLive ? "live" : "polling";
    const label = status.querySelector(".live-label");
    label.textContent = isLive ? label.dataset.live : label.dataset.polling;
  }

  function pollOnce() {
    if (live || document.hidden || !window.htmx) return;
    document.querySelectorAll("[data-poll]").forEach(function (el) {
      if (el.closest("form:focus-within") || el.querySelector("input:checked")) return;
      // Marked as a background refresh: it does not keep the session from going idle.
      htmx.ajax("GET", el.dataset.poll, { target: el, swap: "outerHTML",
                                          headers: { "X-Backstop-Refresh": "poll" } });
    });
  }

  // Marked data-poll-always (the nav's alert count): refreshed even while the socket is live,
  // since not every page's socket carries alerts.
  function pollAlways() {
    if (document.hidden || !window.htmx) return;
    document.querySelectorAll("[data-poll-always]").forEach(function (el) {
      htmx.ajax("GET", el.dataset.pollAlways, { target: el, swap: "outerHTML",
                                                headers: { "X-Backstop-Refresh": "poll" } });
    });
  }

  function dismiss(event) {
    const button = event.target.closest("[data-dismiss]");
    if (button) button.closest(".toast").remove();
  }

  function autoSubmit(event) {
    if (event.target.matches("[data-autosubmit]")) event.target.form.requestSubmit();
  }

  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRFToken"] = csrfToken();
  });
  document.addEventListener("htmx:wsOpen", function () { showMode(true); });
  document.addEventListener("htmx:wsClose", function () { showMode(false); });
  document.addEventListener("htmx:wsError", function () { showMode(false); });
  document.addEventListener("change", autoSubmit);
  document.addEventListener("click", dismiss);
  document.addEventListener("DOMContentLoaded", function () {
    rememberTimeZone();
    const seconds = Number(document.body.dataset.pollSeconds || 5);
    window.setInterval(pollOnce, seconds * 1000);
    window.setInterval(pollAlways, seconds * 1000);
  });
})();
