// Runs before the first paint (a classic script in <head>; the page's modules run later): the theme
// the user chose with the toggle (js/layout.js), else the system's.
(function () {
  var stored = null;
  try { stored = localStorage.getItem("dualchat.theme"); } catch (e) { /* private mode */ }
  var dark = stored === "dark" || (stored !== "light" && window.matchMedia("(prefers-color-scheme: dark)").matches);
  document.documentElement.dataset.theme = dark ? "dark" : "light";
})();
