// Qwen's status in the top bar (GET /qwen/status every few seconds while the page is visible).
import { getJSON, KEY_SAVED_EVENT } from "./api.js";
import { $, showBanner } from "./dom.js";

const STATUS_POLL_MS = 5000;
let timer = null;
let busy = false;

function renderStatus(st) {
  const box = $("qwen-status");
  const text = $("qwen-status-text");
  const detail = $("qwen-status-detail");
  if (st.online) {
    box.dataset.state = "online";
    text.textContent = "Qwen online";
    const bits = [st.model || "unknown model"];
    if (st.cache_mode) bits.push(`${st.cache_mode} cache`);
    if (st.max_seq_len) bits.push(`${st.max_seq_len} ctx`);
    if (st.last_tokens_per_second) bits.push(`${Number(st.last_tokens_per_second).toFixed(1)} tok/s`);
    detail.textContent = bits.join(" · ");
    box.title = ["Qwen server online", ...bits, st.url ? `at ${st.url}` : ""].filter(Boolean).join("\n");
  } else {
    box.dataset.state = "offline";
    text.textContent = "Qwen offline";
    detail.textContent = st.reason || "";
    box.title = `Qwen server offline${st.reason ? ": " + st.reason : ""}`;
  }
}

export async function pollStatus() {
  clearTimeout(timer);
  if (busy) return;  // the poll in flight schedules the next one
  busy = true;
  try {
    if (!document.hidden) renderStatus(await getJSON("/qwen/status", false));
  } catch (e) {
    renderStatus({ online: false, reason: e.status === 401 ? "API key needed to see the status" : e.message });
  } finally {
    busy = false;
    clearTimeout(timer);
    timer = setTimeout(pollStatus, STATUS_POLL_MS);
  }
}

export function bindStatus() {
  $("qwen-status").addEventListener("click", () => showBanner($("qwen-status").title.replace(/\n/g, " · "), "info"));
  document.addEventListener("visibilitychange", () => { if (!document.hidden) pollStatus(); });
  document.addEventListener(KEY_SAVED_EVENT, pollStatus);  // the status shown may be the 401 of the old key
}
