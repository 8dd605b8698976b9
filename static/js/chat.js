// Asking: the composer, streaming an answer (SSE), Stop, and the new exchanges that Regenerate and
// Edit make (each one new question in the same conversation; the history keeps the earlier ones).
import { readSSE, request } from "./api.js";
import { $, hideBanner } from "./dom.js";
import { refreshSidebar, setSession } from "./conversations.js";
import { addAssistantMessage, addUserMessage, finishView, RESEND_EVENT, scheduleRender, scrollToBottom,
  showRoute } from "./messages.js";
import { currentModel } from "./models.js";
import { samplingParams, settingsValid } from "./settings.js";
import { ENDPOINTS, state, stopStreaming } from "./state.js";

function autosize() {
  const ta = $("input");
  ta.style.height = "auto";
  ta.style.height = Math.min(ta.scrollHeight, 220) + "px";
}

function setBusy(busy) {
  $("send").hidden = busy;
  $("stop").hidden = !busy;
  document.body.classList.toggle("is-streaming", busy);
}

function onEvent(ev, view, text, finish) {
  if (ev.type === "start") {
    if (ev.session && ev.session !== state.session) setSession(ev.session, text.trim().slice(0, 200));
    showRoute(view, ev);
  } else if (ev.type === "delta") {
    view.text += ev.text || "";
    scheduleRender(view);
  } else if (ev.type === "done") {
    finish(ev.blocked ? "blocked" : "ok", ev);
  } else if (ev.type === "error") {
    finish("error", { error: (ev.error && ev.error.message) || "The answer failed." });
  }
}

// Sends `text` as a new question in the conversation shown and streams its answer; `fromComposer`:
// a question refused before it reached the model is given back to the message box for editing.
async function ask(text, fromComposer) {
  if (!text.trim() || state.streaming) return;
  if (!settingsValid()) return;
  hideBanner();
  const provider = currentModel();
  const body = { q: text, stream: 1, system: $("system-prompt").value, ...samplingParams(provider) };
  if (state.session) body.session = state.session;
  addUserMessage(text);
  const view = addAssistantMessage(provider, text);
  scrollToBottom(true);
  const controller = new AbortController();
  state.streaming = { controller, view };
  setBusy(true);
  let finished = false;
  const finish = (status, info) => { finished = true; finishView(view, status, info); };
  try {
    const resp = await request(ENDPOINTS[provider] || `/${provider}`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal: controller.signal,
    });
    await readSSE(resp, (ev) => onEvent(ev, view, text, finish));
    if (!finished) finish("error", { error: "The connection closed before the answer was complete." });
  } catch (e) {
    if (e.name === "AbortError") {
      finish("cancelled", {});
    } else {
      finish("error", { error: e.message || String(e) });
      if (e.session && !state.session) setSession(e.session, text.trim().slice(0, 200));
      if (fromComposer && !view.text && e.status && !$("input").value) {
        $("input").value = text;  // refused before it reached the model: given back for editing
        autosize();
      }
    }
  } finally {
    state.streaming = null;
    setBusy(false);
    if (fromComposer || !document.activeElement || document.activeElement === document.body) $("input").focus();
    refreshSidebar();
  }
}

function sendComposer() {
  const text = $("input").value;
  if (!text.trim() || state.streaming) return;
  $("input").value = "";
  autosize();
  ask(text, true);
}

export function bindChat() {
  $("composer").addEventListener("submit", (ev) => { ev.preventDefault(); sendComposer(); });
  $("input").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      sendComposer();
    } else if (ev.key === "Escape" && state.streaming) {
      ev.preventDefault();
      stopStreaming();
    }
  });
  $("input").addEventListener("input", autosize);
  $("stop").addEventListener("click", () => { stopStreaming(); $("input").focus(); });
  $("messages").addEventListener(RESEND_EVENT, (ev) => {
    if (state.streaming) return;
    ask(ev.detail.text, false);
  });
}
