// HTTP for the page: the API key (asked for on a 401), JSON errors, and Server-Sent Events over fetch
// (EventSource cannot send the Authorization header).
import { $, storageSet, tabGet, tabSet } from "./dom.js";
import { state } from "./state.js";

export const KEY_STORAGE = "dualchat.apiKey";
export const KEY_SAVED_EVENT = "dualchat:key-saved";
storageSet(KEY_STORAGE, null);  // a key an older page kept in localStorage: the key now lives for the tab only

class ApiError extends Error {
  constructor(message, status, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export function authHeaders(extra) {
  const headers = new Headers(extra || {});
  const key = tabGet(KEY_STORAGE);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  return headers;
}

async function errorFrom(resp) {
  let message = `The server answered ${resp.status} ${resp.statusText}`.trim() + ".";
  let code = null;
  try {
    const body = await resp.json();
    if (body && body.error && body.error.message) {
      message = String(body.error.message);
      code = body.error.code || null;
    }
  } catch (e) { /* not JSON: keep the status line */ }
  const err = new ApiError(message, resp.status, code);
  err.session = resp.headers.get("X-Session-ID");  // a question refused after its conversation was made
  return err;
}

// fetch() with the API key; a 401 asks for the key (once for all callers) and retries.
// interactive=false (background polling) never opens the dialog.
export async function request(path, opts = {}, interactive = true) {
  for (;;) {
    let resp;
    try {
      resp = await fetch(path, { ...opts, headers: authHeaders(opts.headers) });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new ApiError("Cannot reach the chat server. Is it running? (" + e.message + ")", 0, "network_error");
    }
    if (resp.ok) return resp;
    const err = await errorFrom(resp);
    if (resp.status !== 401 || !interactive) throw err;
    tabSet(KEY_STORAGE, null);
    await askForKey(err.message);  // throws when the user cancels
  }
}

export async function getJSON(path, interactive = true) {
  return (await request(path, {}, interactive)).json();
}

export function askForKey(message) {
  if (state.keyPrompt) return state.keyPrompt;
  const dialog = $("key-dialog");
  state.keyPrompt = new Promise((resolve, reject) => {
    let saved = false;
    $("key-msg").textContent = message || "This server needs an API key (CHAT_API_KEY).";
    $("key-input").value = "";
    const onSubmit = (ev) => {
      ev.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) { $("key-input").focus(); return; }
      tabSet(KEY_STORAGE, key);
      saved = true;
      dialog.close();
    };
    const onCancel = () => dialog.close();
    const onClose = () => {
      $("key-form").removeEventListener("submit", onSubmit);
      $("key-cancel").removeEventListener("click", onCancel);
      state.keyPrompt = null;
      if (saved) {
        resolve();
        setTimeout(() => document.dispatchEvent(new Event(KEY_SAVED_EVENT)), 0);
      } else {
        reject(new ApiError("This server needs an API key; nothing was sent without one.", 401, "invalid_api_key"));
      }
    };
    $("key-form").addEventListener("submit", onSubmit);
    $("key-cancel").addEventListener("click", onCancel);
    dialog.addEventListener("close", onClose, { once: true });
    dialog.showModal();
    $("key-input").focus();
  });
  return state.keyPrompt;
}

export async function readSSE(resp, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let data = [];
  const dispatch = () => {
    if (!data.length) return;
    const payload = data.join("\n");
    data = [];
    if (payload === "[DONE]") return;
    let event;
    try { event = JSON.parse(payload); } catch (e) { return; }
    onEvent(event);
  };
  const takeLine = (line) => {
    if (line.endsWith("\r")) line = line.slice(0, -1);
    if (line === "") dispatch();
    else if (line.startsWith("data:")) data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
    // comments (":...") and other fields (event:, id:, retry:) are not used by this API
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let nl;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      takeLine(buffer.slice(0, nl));
      buffer = buffer.slice(nl + 1);
    }
  }
  buffer += decoder.decode();
  if (buffer) takeLine(buffer);
  dispatch();
}
