// Conversations: the one shown (URL #c/<id>), opening one from the history, the sidebar list and
// search, delete and JSONL export.
import { getJSON, request } from "./api.js";
import { $, button, el, hideBanner, relativeTime, showBanner } from "./dom.js";
import { closeSidebar } from "./layout.js";
import { addAssistantMessage, addUserMessage, finishView, scrollToBottom, setEmpty } from "./messages.js";
import { setModel } from "./models.js";
import { PROVIDER_NAMES, state, stopStreaming } from "./state.js";

export function setSession(id, title) {
  state.session = id;
  state.sessionTitle = title || null;
  $("export-chat").disabled = !id;
  document.title = title ? `${title} · Dual AI Chat` : "Dual AI Chat";
  const hash = id ? `#c/${id}` : "";
  if (location.hash !== hash) history.replaceState(null, "", location.pathname + location.search + hash);
  markActive();
}

function newChat() {
  stopStreaming();
  setSession(null, null);
  $("messages").replaceChildren();
  setEmpty();
  $("system-prompt").value = state.config.default_system_prompt || "";
  hideBanner();
  closeSidebar();
  $("input").focus();
}

function showMessages(conv) {
  $("messages").replaceChildren();
  let question = "";
  for (const m of conv.messages || []) {
    if (m.role === "user") {
      question = m.content || "";
      addUserMessage(question);
    } else if (m.role === "assistant") {
      const view = addAssistantMessage(m.provider || conv.provider, question);
      view.text = m.content || "";
      finishView(view, m.status || "ok", {
        model: m.model, completion_tokens: m.completion_tokens, latency_ms: m.latency_ms,
        finish_reason: m.finish_reason, message_id: m.id, provider: m.provider, route: m.route,
        error: m.status === "error" ? (m.error || "The answer failed.") : null,
      });
    }
  }
  setEmpty();
}

export async function openConversation(id) {
  stopStreaming();
  hideBanner();
  let conv;
  try {
    conv = await getJSON(`/history/${encodeURIComponent(id)}`);
  } catch (e) {
    showBanner(`Could not open the conversation: ${e.message}`);
    if (!state.session && location.hash) history.replaceState(null, "", location.pathname + location.search);
    return;
  }
  showMessages(conv);
  setSession(conv.id, conv.title);
  setModel(conv.provider);
  $("system-prompt").value = conv.system_prompt || "";
  closeSidebar();
  scrollToBottom(true);
  $("input").focus();
}

async function deleteConversation(conv) {
  if (!window.confirm(`Delete the conversation “${conv.title || "Untitled"}”? This cannot be undone.`)) return;
  try {
    await request(`/history/${encodeURIComponent(conv.id)}`, { method: "DELETE" });
  } catch (e) {
    showBanner(`Could not delete the conversation: ${e.message}`);
    return;
  }
  if (conv.id === state.session) newChat(); else $("search").focus();
  refreshSidebar();
}

async function exportJsonl(session) {
  try {
    const qs = session ? `&session=${encodeURIComponent(session)}` : "";
    const resp = await request(`/history/export?format=jsonl${qs}`);
    const blob = await resp.blob();
    const url = URL.createObjectURL(blob);
    const a = el("a");
    a.href = url;
    a.download = session ? `chat-${session.slice(0, 12)}.jsonl` : "chat-history.jsonl";
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    showBanner(`Export failed: ${e.message}`);
  }
}

function convItem(conv, snippet) {
  const item = el("div", "conv");
  item.dataset.session = conv.id;
  const open = button("conv-open");
  open.append(el("span", "conv-title", conv.title || "Untitled"));
  const sub = el("span", "conv-sub");
  sub.append(el("span", `tag tag-${conv.provider}`, PROVIDER_NAMES[conv.provider] || conv.provider || "?"));
  sub.append(el("span", "conv-time", snippet || relativeTime(conv.updated_at)));
  open.append(sub);
  open.addEventListener("click", () => openConversation(conv.id));
  const del = button("icon-btn conv-del", "×", `Delete conversation ${conv.title || ""}`.trim());
  del.title = "Delete conversation";
  del.addEventListener("click", (ev) => { ev.stopPropagation(); deleteConversation(conv); });
  item.append(open, del);
  return item;
}

function markActive() {
  for (const item of $("conv-list").querySelectorAll(".conv")) {
    const active = item.dataset.session === state.session;
    item.classList.toggle("active", active);
    if (active) item.setAttribute("aria-current", "true"); else item.removeAttribute("aria-current");
  }
}

function showListNote(text) {
  $("conv-list").replaceChildren(el("div", "list-note", text));
}

async function searchResults(q) {
  const { messages } = await getJSON(`/history?limit=200&q=${encodeURIComponent(q)}`);
  const byId = new Map(state.sessions.map((c) => [c.id, c]));
  const seen = new Map();
  for (const m of messages || []) {
    if (seen.has(m.session)) continue;
    const conv = byId.get(m.session) || { id: m.session, provider: m.provider, title: null };
    seen.set(m.session, convItem({ ...conv, title: conv.title || (m.content || "").slice(0, 80) },
      (m.content || "").replace(/\s+/g, " ").slice(0, 80)));
  }
  return [...seen.values()];
}

export async function refreshSidebar() {
  const seq = ++state.searchSeq;
  const q = $("search").value.trim();
  try {
    const { sessions } = await getJSON("/history/sessions?limit=200");
    if (seq !== state.searchSeq) return;
    state.sessions = sessions || [];
    const items = q ? await searchResults(q) : state.sessions.map((c) => convItem(c));
    if (seq !== state.searchSeq) return;
    if (items.length) $("conv-list").replaceChildren(...items);
    else showListNote(q ? `Nothing matches “${q}”.` : "No conversations yet.");
    markActive();
  } catch (e) {
    if (seq === state.searchSeq) showListNote(`Could not load the history: ${e.message}`);
  }
}

export function bindConversations() {
  $("new-chat").addEventListener("click", newChat);
  $("export-all").addEventListener("click", () => exportJsonl(null));
  $("export-chat").addEventListener("click", () => state.session && exportJsonl(state.session));
  let searchTimer = null;
  $("search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(refreshSidebar, 250);
  });
}
