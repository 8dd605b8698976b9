// Small DOM and storage helpers. Safety rule for every module of the page: text from the server
// (answers, history, titles, errors) only reaches the page through textContent / createElement,
// never through innerHTML.
export const $ = (id) => document.getElementById(id);

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

export function button(className, text, label) {
  const btn = el("button", className, text);
  btn.type = "button";
  if (label) btn.setAttribute("aria-label", label);
  return btn;
}

// localStorage: settings kept across visits. sessionStorage ("tab"): the API key, for this tab only, gone
// when it closes, never a cookie. Storage may be off (private mode): then a value lives for this page only.
function getIn(area, key) {
  try { return window[area].getItem(key); } catch (e) { return null; }
}

function setIn(area, key, value) {
  try {
    if (value === null) window[area].removeItem(key); else window[area].setItem(key, value);
  } catch (e) { /* storage off */ }
}

export const storageGet = (key) => getIn("localStorage", key);
export const storageSet = (key, value) => setIn("localStorage", key, value);
export const tabGet = (key) => getIn("sessionStorage", key);
export const tabSet = (key, value) => setIn("sessionStorage", key, value);

export function relativeTime(seconds) {
  if (!seconds) return "";
  const diff = Date.now() / 1000 - seconds;
  if (diff < 60) return "just now";
  if (diff < 3600) return `${Math.floor(diff / 60)} min ago`;
  if (diff < 86400) return `${Math.floor(diff / 3600)} h ago`;
  const d = new Date(seconds * 1000);
  return d.toLocaleDateString(undefined, { day: "numeric", month: "short",
    year: diff > 300 * 86400 ? "numeric" : undefined });
}

export function formatSeconds(ms) {
  if (ms === null || ms === undefined) return null;
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

export function showBanner(message, kind = "error") {
  $("banner-text").textContent = message;
  $("banner").dataset.kind = kind;
  $("banner").hidden = false;
}

export function hideBanner() { $("banner").hidden = true; }

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (e) {
    const ta = el("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.opacity = "0";
    document.body.append(ta);
    ta.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (e2) { ok = false; }
    ta.remove();
    return ok;
  }
}
