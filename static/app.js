// Dual AI Chat web page: plain ES2020, no build step, no external resources.
// Safety rule for this file: text from the server (answers, history, titles, errors) only ever
// reaches the page through textContent / createElement, never through innerHTML.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEY_STORAGE = "dualchat.apiKey";
  const PARAMS_STORAGE = "dualchat.params";
  const PARAMS = ["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens"];
  const INT_PARAMS = new Set(["top_k", "max_tokens"]);
  const GIGACHAT_PARAMS = new Set(["temperature", "top_p", "repetition_penalty", "max_tokens"]);
  const PROVIDER_NAMES = { gigachat: "GigaChat", qwen: "Qwen" };
  const STATUS_POLL_MS = 5000;
  const FALLBACK_CONFIG = {
    default_system_prompt: "",
    qwen_defaults: { temperature: 0.4, top_p: 0.9, top_k: 60, repetition_penalty: 1.1, max_tokens: null },
    gigachat_model: "GigaChat",
    auth_required: false,
  };

  const state = {
    config: FALLBACK_CONFIG,
    session: null,        // the conversation shown; new questions continue it
    sessionTitle: null,
    streaming: null,      // {controller, view} while an answer streams
    sessions: [],         // GET /history/sessions, most recent first
    searchSeq: 0,
    keyPrompt: null,      // the pending API-key dialog, shared by concurrent 401s
    statusTimer: null,
    statusBusy: false,
  };

  // -- small helpers ------------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function storageGet(key) {
    try { return localStorage.getItem(key); } catch (e) { return null; }
  }

  function storageSet(key, value) {
    try {
      if (value === null) localStorage.removeItem(key); else localStorage.setItem(key, value);
    } catch (e) { /* private mode: the value lives for this page only */ }
  }

  function relativeTime(seconds) {
    if (!seconds) return "";
    const diff = Date.now() / 1000 - seconds;
    if (diff < 60) return "just now";
    if (diff < 3600) return `${Math.floor(diff / 60)} min ago`;
    if (diff < 86400) return `${Math.floor(diff / 3600)} h ago`;
    const d = new Date(seconds * 1000);
    return d.toLocaleDateString(undefined, { day: "numeric", month: "short",
      year: diff > 300 * 86400 ? "numeric" : undefined });
  }

  function formatSeconds(ms) {
    if (ms === null || ms === undefined) return null;
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
  }

  function showBanner(message, kind = "error") {
    $("banner-text").textContent = message;
    $("banner").dataset.kind = kind;
    $("banner").hidden = false;
  }

  function hideBanner() { $("banner").hidden = true; }

  // -- HTTP: API key, JSON errors -------------------------------------------------------------------

  class ApiError extends Error {
    constructor(message, status, code) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function authHeaders(extra) {
    const headers = new Headers(extra || {});
    const key = storageGet(KEY_STORAGE);
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
  async function request(path, opts = {}, interactive = true) {
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
      storageSet(KEY_STORAGE, null);
      await askForKey(err.message);  // throws when the user cancels
    }
  }

  async function getJSON(path, interactive = true) {
    return (await request(path, {}, interactive)).json();
  }

  function askForKey(message) {
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
        storageSet(KEY_STORAGE, key);
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
          setTimeout(pollStatus, 0);  // the status shown may be the 401 of the old key
        }
        else reject(new ApiError("This server needs an API key; nothing was sent without one.", 401,
          "invalid_api_key"));
      };
      $("key-form").addEventListener("submit", onSubmit);
      $("key-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("close", onClose, { once: true });
      dialog.showModal();
      $("key-input").focus();
    });
    return state.keyPrompt;
  }

  // -- Server-Sent Events over fetch (EventSource cannot send the Authorization header) ---------------

  async function readSSE(resp, onEvent) {
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

  // -- rendering answers: text, inline code and fenced code blocks ------------------------------------

  const FENCE_OPEN = /^ {0,3}(`{3,}|~{3,})\s*([^\s`]*)/;

  function splitFences(text) {
    const out = [];
    let buf = [];
    let fence = null;
    let lang = "";
    const flushText = () => {
      const t = buf.join("\n").replace(/^\n+|\n+$/g, "");
      if (t) out.push({ type: "text", text: t });
      buf = [];
    };
    for (const line of text.split("\n")) {
      if (fence === null) {
        const m = FENCE_OPEN.exec(line);
        // a backtick fence's info string has no backticks: "```x```" on one line is inline code
        if (m && !(m[1][0] === "`" && line.slice(line.indexOf(m[1]) + m[1].length).includes("`"))) {
          flushText(); fence = m[1]; lang = m[2];
          continue;
        }
        buf.push(line);
      } else {
        const t = line.trim();
        if (t.length >= fence.length && t === t[0].repeat(t.length) && t[0] === fence[0]) {
          out.push({ type: "code", lang, code: buf.join("\n"), open: false });
          buf = []; fence = null;
          continue;
        }
        buf.push(line);
      }
    }
    if (fence !== null) out.push({ type: "code", lang, code: buf.join("\n"), open: true });
    else flushText();
    return out;
  }

  function textBlock(text) {
    const p = el("div", "md-text");
    const parts = text.split(/(`[^`\n]+`)/);
    for (const part of parts) {
      if (!part) continue;
      if (part.length > 2 && part.startsWith("`") && part.endsWith("`")) p.append(el("code", "inline-code", part.slice(1, -1)));
      else p.append(document.createTextNode(part));
    }
    return p;
  }

  async function copyText(text) {
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

  function codeBlock(lang, code) {
    const box = el("div", "code-block");
    const head = el("div", "code-head");
    head.append(el("span", "code-lang", lang || "code"));
    const btn = el("button", "copy-btn", "Copy");
    btn.type = "button";
    btn.title = "Copy code";
    btn.addEventListener("click", async () => {
      const ok = await copyText(code);
      btn.textContent = ok ? "Copied" : "Copy failed";
      btn.classList.toggle("copied", ok);
      setTimeout(() => { btn.textContent = "Copy"; btn.classList.remove("copied"); }, 1500);
    });
    head.append(btn);
    const pre = el("pre");
    const codeEl = el("code", lang ? `lang-${lang.replace(/[^\w-]/g, "")}` : "", code);
    pre.append(codeEl);
    box.append(head, pre);
    return box;
  }

  function renderContent(container, text) {
    const frag = document.createDocumentFragment();
    for (const seg of splitFences(text)) {
      frag.append(seg.type === "code" ? codeBlock(seg.lang, seg.code) : textBlock(seg.text));
    }
    container.replaceChildren(frag);
  }

  // -- message views ----------------------------------------------------------------------------------

  const STATUS_BADGES = {
    cancelled: "Stopped",
    blocked: "Blocked by GigaChat's content filter",
    error: "Error",
  };

  function chatNearBottom() {
    const c = $("chat");
    return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
  }

  function scrollToBottom(force) {
    const c = $("chat");
    if (force || chatNearBottom()) c.scrollTop = c.scrollHeight;
  }

  function setEmpty() {
    $("empty").hidden = $("messages").childElementCount > 0;
  }

  function addUserMessage(text) {
    const msg = el("div", "msg msg-user");
    msg.dataset.role = "user";
    const bubble = el("div", "msg-body");
    renderContent(bubble, text);
    msg.append(bubble);
    $("messages").append(msg);
    setEmpty();
    return msg;
  }

  function addAssistantMessage(provider) {
    const msg = el("div", "msg msg-assistant");
    msg.dataset.role = "assistant";
    msg.dataset.provider = provider;
    msg.dataset.status = "streaming";
    const head = el("div", "msg-head");
    const who = el("span", `msg-who who-${provider}`, PROVIDER_NAMES[provider] || provider);
    const badge = el("span", "badge");
    badge.hidden = true;
    head.append(who, badge);
    const body = el("div", "msg-body");
    const typing = el("div", "typing");
    typing.append(el("span"), el("span"), el("span"));
    typing.setAttribute("aria-label", "Waiting for the answer");
    body.append(typing);
    const error = el("div", "msg-error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    const meta = el("div", "msg-meta");
    msg.append(head, body, error, meta);
    $("messages").append(msg);
    setEmpty();
    return { msg, who, badge, body, error, meta, text: "", renderPending: false };
  }

  function renderView(view) {
    view.renderPending = false;
    const stick = chatNearBottom();
    if (view.text) renderContent(view.body, view.text);
    else if (view.msg.dataset.status !== "streaming") view.body.replaceChildren();
    if (view.msg.dataset.status === "streaming" && view.text) view.body.append(el("span", "cursor"));
    if (stick) scrollToBottom(true);
  }

  function scheduleRender(view) {
    if (view.renderPending) return;
    view.renderPending = true;
    requestAnimationFrame(() => renderView(view));
  }

  function finishView(view, status, info = {}) {
    view.msg.dataset.status = status;
    if (info.model) view.who.textContent = `${PROVIDER_NAMES[view.msg.dataset.provider] || ""} · ${info.model}`;
    if (STATUS_BADGES[status]) {
      view.badge.textContent = STATUS_BADGES[status];
      view.badge.className = `badge badge-${status}`;
      view.badge.hidden = false;
    }
    if (info.error) {
      view.error.textContent = info.error;
      view.error.hidden = false;
    }
    const meta = [];
    const usage = info.usage || {};
    const tokens = usage.completion_tokens ?? info.completion_tokens;
    if (tokens) meta.push(`${tokens} tokens`);
    const tps = usage.timings && usage.timings.tokens_per_second;
    if (tps) meta.push(`${Number(tps).toFixed(1)} tok/s`);
    const elapsed = formatSeconds(info.elapsed_ms ?? info.latency_ms);
    if (elapsed) meta.push(elapsed);
    if (info.finish_reason === "length") meta.push("cut at max tokens");
    view.meta.textContent = meta.join(" · ");
    if (info.message_id) view.msg.dataset.messageId = info.message_id;
    renderView(view);
  }

  // -- sending and streaming --------------------------------------------------------------------------

  function currentModel() {
    const checked = document.querySelector('input[name="model"]:checked');
    return checked ? checked.value : "gigachat";
  }

  function setModel(provider) {
    const radio = document.querySelector(`input[name="model"][value="${provider === "qwen" ? "qwen" : "gigachat"}"]`);
    if (radio) radio.checked = true;
    updatePlaceholder();
  }

  // The tab a new page opens on: the current one if its provider is configured, else the first that is
  // (GET /config says which; the demo has no GigaChat key, so it opens on Qwen).
  function defaultModel() {
    const providers = state.config.providers || {};
    const works = (name) => !providers[name] || providers[name].configured;
    return works(currentModel()) ? currentModel() : (Object.keys(PROVIDER_NAMES).find(works) || currentModel());
  }

  function updatePlaceholder() {
    $("input").placeholder = `Message ${PROVIDER_NAMES[currentModel()]}…`;
  }

  function setBusy(busy) {
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    document.body.classList.toggle("is-streaming", busy);
  }

  function samplingParams(provider) {
    const out = {};
    const defaults = state.config.qwen_defaults || {};
    for (const name of PARAMS) {
      if (provider === "gigachat" && !GIGACHAT_PARAMS.has(name)) continue;
      const raw = $(`p-${name}`).value.trim();
      if (raw === "") continue;
      const value = INT_PARAMS.has(name) ? parseInt(raw, 10) : parseFloat(raw);
      if (!Number.isFinite(value)) continue;
      if (defaults[name] !== null && defaults[name] !== undefined && Number(defaults[name]) === value) continue;
      out[name] = value;
    }
    return out;
  }

  function settingsValid() {
    for (const name of PARAMS) {
      const input = $(`p-${name}`);
      if (!input.checkValidity()) {
        openSettings(true);
        input.reportValidity();
        const label = input.closest(".field").querySelector(".field-label").textContent.trim();
        showBanner(`${label}: ${input.validationMessage}`);
        return false;
      }
    }
    return true;
  }

  function autosize() {
    const ta = $("input");
    ta.style.height = "auto";
    ta.style.height = Math.min(ta.scrollHeight, 220) + "px";
  }

  async function send() {
    const input = $("input");
    const text = input.value;
    if (!text.trim() || state.streaming) return;
    if (!settingsValid()) return;
    hideBanner();
    const provider = currentModel();
    const body = { q: text, stream: 1, system: $("system-prompt").value, ...samplingParams(provider) };
    if (state.session) body.session = state.session;
    input.value = "";
    autosize();
    addUserMessage(text);
    const view = addAssistantMessage(provider);
    scrollToBottom(true);
    const controller = new AbortController();
    state.streaming = { controller, view };
    setBusy(true);
    let finished = false;
    try {
      const resp = await request(`/${provider}`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      await readSSE(resp, (ev) => {
        if (ev.type === "start") {
          if (ev.session && ev.session !== state.session) setSession(ev.session, text.trim().slice(0, 200));
        } else if (ev.type === "delta") {
          view.text += ev.text || "";
          scheduleRender(view);
        } else if (ev.type === "done") {
          finished = true;
          finishView(view, ev.blocked ? "blocked" : "ok", ev);
        } else if (ev.type === "error") {
          finished = true;
          const message = (ev.error && ev.error.message) || "The answer failed.";
          finishView(view, "error", { error: message });
        }
      });
      if (!finished) {
        finishView(view, "error", { error: "The connection closed before the answer was complete." });
      }
    } catch (e) {
      if (e.name === "AbortError") {
        finishView(view, "cancelled", {});
      } else {
        finishView(view, "error", { error: e.message || String(e) });
        if (e.session && !state.session) setSession(e.session, text.trim().slice(0, 200));
        if (!view.text && e.status && e.status !== 0) {
          // The question was refused before it reached the model: give it back for editing.
          if (!$("input").value) { $("input").value = text; autosize(); }
        }
      }
    } finally {
      state.streaming = null;
      setBusy(false);
      $("input").focus();
      refreshSidebar();
    }
  }

  function stop() {
    if (state.streaming) state.streaming.controller.abort();
  }

  // -- conversations ----------------------------------------------------------------------------------

  function setSession(id, title) {
    state.session = id;
    state.sessionTitle = title || null;
    $("export-chat").disabled = !id;
    document.title = title ? `${title} · Dual AI Chat` : "Dual AI Chat";
    const hash = id ? `#c/${id}` : "";
    if (location.hash !== hash) history.replaceState(null, "", location.pathname + location.search + hash);
    markActive();
  }

  function newChat() {
    if (state.streaming) stop();
    setSession(null, null);
    $("messages").replaceChildren();
    setEmpty();
    $("system-prompt").value = state.config.default_system_prompt || "";
    hideBanner();
    closeSidebar();
    $("input").focus();
  }

  async function openConversation(id) {
    if (state.streaming) stop();
    hideBanner();
    let conv;
    try {
      conv = await getJSON(`/history/${encodeURIComponent(id)}`);
    } catch (e) {
      showBanner(`Could not open the conversation: ${e.message}`);
      if (!state.session && location.hash) history.replaceState(null, "", location.pathname + location.search);
      return;
    }
    $("messages").replaceChildren();
    for (const m of conv.messages || []) {
      if (m.role === "user") {
        addUserMessage(m.content || "");
      } else if (m.role === "assistant") {
        const view = addAssistantMessage(m.provider || conv.provider);
        view.text = m.content || "";
        finishView(view, m.status || "ok", {
          model: m.model, completion_tokens: m.completion_tokens, latency_ms: m.latency_ms,
          finish_reason: m.finish_reason, message_id: m.id,
          error: m.status === "error" ? (m.error || "The answer failed.") : null,
        });
      }
    }
    setEmpty();
    setSession(conv.id, conv.title);
    setModel(conv.provider);
    $("system-prompt").value = conv.system_prompt || "";
    closeSidebar();
    scrollToBottom(true);
  }

  async function deleteConversation(conv) {
    if (!window.confirm(`Delete the conversation “${conv.title || "Untitled"}”? This cannot be undone.`)) return;
    try {
      await request(`/history/${encodeURIComponent(conv.id)}`, { method: "DELETE" });
    } catch (e) {
      showBanner(`Could not delete the conversation: ${e.message}`);
      return;
    }
    if (conv.id === state.session) newChat();
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
    const open = el("button", "conv-open");
    open.type = "button";
    open.append(el("span", "conv-title", conv.title || "Untitled"));
    const sub = el("span", "conv-sub");
    sub.append(el("span", `tag tag-${conv.provider}`, PROVIDER_NAMES[conv.provider] || conv.provider || "?"));
    sub.append(el("span", "conv-time", snippet || relativeTime(conv.updated_at)));
    open.append(sub);
    open.addEventListener("click", () => openConversation(conv.id));
    const del = el("button", "icon-btn conv-del", "×");
    del.type = "button";
    del.title = "Delete conversation";
    del.setAttribute("aria-label", `Delete conversation ${conv.title || ""}`.trim());
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

  async function refreshSidebar() {
    const seq = ++state.searchSeq;
    const q = $("search").value.trim();
    try {
      const { sessions } = await getJSON("/history/sessions?limit=200");
      if (seq !== state.searchSeq) return;
      state.sessions = sessions || [];
      if (!q) {
        const list = state.sessions.map((c) => convItem(c));
        if (list.length) $("conv-list").replaceChildren(...list);
        else showListNote("No conversations yet.");
      } else {
        const { messages } = await getJSON(`/history?limit=200&q=${encodeURIComponent(q)}`);
        if (seq !== state.searchSeq) return;
        const byId = new Map(state.sessions.map((c) => [c.id, c]));
        const seen = new Map();
        for (const m of messages || []) {
          if (seen.has(m.session)) continue;
          const conv = byId.get(m.session) || { id: m.session, provider: m.provider, title: null };
          seen.set(m.session, convItem({ ...conv, title: conv.title || (m.content || "").slice(0, 80) },
            (m.content || "").replace(/\s+/g, " ").slice(0, 80)));
        }
        if (seen.size) $("conv-list").replaceChildren(...seen.values());
        else showListNote(`Nothing matches “${q}”.`);
      }
      markActive();
    } catch (e) {
      if (seq === state.searchSeq) showListNote(`Could not load the history: ${e.message}`);
    }
  }

  // -- Qwen status ------------------------------------------------------------------------------------

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

  async function pollStatus() {
    clearTimeout(state.statusTimer);
    if (state.statusBusy) return;  // the poll in flight schedules the next one
    state.statusBusy = true;
    try {
      if (!document.hidden) renderStatus(await getJSON("/qwen/status", false));
    } catch (e) {
      renderStatus({ online: false, reason: e.status === 401 ? "API key needed to see the status" : e.message });
    } finally {
      state.statusBusy = false;
      clearTimeout(state.statusTimer);
      state.statusTimer = setTimeout(pollStatus, STATUS_POLL_MS);
    }
  }

  // -- settings ---------------------------------------------------------------------------------------

  function storedParams() {
    try { return JSON.parse(storageGet(PARAMS_STORAGE) || "{}") || {}; } catch (e) { return {}; }
  }

  function fillParams(useStored) {
    const defaults = state.config.qwen_defaults || {};
    const stored = useStored ? storedParams() : {};
    for (const name of PARAMS) {
      const v = name in stored ? stored[name] : defaults[name];
      $(`p-${name}`).value = v === null || v === undefined ? "" : String(v);
      const d = defaults[name];
      $(`p-${name}`).placeholder = d === null || d === undefined ? "server default" : String(d);
    }
  }

  function saveParams() {
    const defaults = state.config.qwen_defaults || {};
    const out = {};
    for (const name of PARAMS) {
      const raw = $(`p-${name}`).value.trim();
      const d = defaults[name] === null || defaults[name] === undefined ? "" : String(defaults[name]);
      if (raw !== d) out[name] = raw === "" ? null : Number(raw);
    }
    storageSet(PARAMS_STORAGE, Object.keys(out).length ? JSON.stringify(out) : null);
  }

  function openSettings(open) {
    $("settings").hidden = !open;
    $("settings-btn").setAttribute("aria-expanded", String(open));
    document.body.classList.toggle("settings-open", open);
  }

  // -- layout: the sidebar behind a button on narrow screens --------------------------------------

  function openSidebar() {
    document.body.classList.add("sidebar-open");
    $("scrim").hidden = false;
    $("menu-btn").setAttribute("aria-expanded", "true");
  }

  function closeSidebar() {
    document.body.classList.remove("sidebar-open");
    $("scrim").hidden = true;
    $("menu-btn").setAttribute("aria-expanded", "false");
  }

  // -- start ------------------------------------------------------------------------------------------

  function bind() {
    $("composer").addEventListener("submit", (ev) => { ev.preventDefault(); send(); });
    $("input").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        send();
      }
    });
    $("input").addEventListener("input", autosize);
    $("stop").addEventListener("click", stop);
    $("new-chat").addEventListener("click", newChat);
    $("export-all").addEventListener("click", () => exportJsonl(null));
    $("export-chat").addEventListener("click", () => state.session && exportJsonl(state.session));
    $("banner-close").addEventListener("click", hideBanner);
    $("qwen-status").addEventListener("click", () => showBanner($("qwen-status").title.replace(/\n/g, " · "), "info"));
    for (const radio of document.querySelectorAll('input[name="model"]')) radio.addEventListener("change", updatePlaceholder);
    let searchTimer = null;
    $("search").addEventListener("input", () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(refreshSidebar, 250);
    });
    $("settings-btn").addEventListener("click", () => openSettings($("settings").hidden));
    $("settings-close").addEventListener("click", () => openSettings(false));
    $("settings-form").addEventListener("input", saveParams);
    $("settings-form").addEventListener("submit", (ev) => ev.preventDefault());
    $("settings-reset").addEventListener("click", () => {
      storageSet(PARAMS_STORAGE, null);
      fillParams(false);
      $("system-prompt").value = state.config.default_system_prompt || "";
    });
    $("menu-btn").addEventListener("click", () => {
      if (document.body.classList.contains("sidebar-open")) closeSidebar(); else openSidebar();
    });
    $("scrim").addEventListener("click", closeSidebar);
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") {
        if (!$("settings").hidden) openSettings(false);
        closeSidebar();
      }
    });
    document.addEventListener("visibilitychange", () => { if (!document.hidden) pollStatus(); });
  }

  async function init() {
    bind();
    try {  // with a key set, /config needs it too: a 401 asks for it here
      state.config = { ...FALLBACK_CONFIG, ...(await getJSON("/config")) };
    } catch (e) {
      if (e.status === 401) showBanner(e.message);  // the key dialog was cancelled
      /* otherwise keep the built-in defaults */
    }
    fillParams(true);
    setModel(defaultModel());
    $("system-prompt").value = state.config.default_system_prompt || "";
    updatePlaceholder();
    setEmpty();
    pollStatus();
    await refreshSidebar();
    const m = /^#c\/((?!\.+$)[\w.-]{1,100})$/.exec(location.hash);  // chat.py SESSION_ID
    if (m) await openConversation(m[1]);
    document.body.dataset.ready = "1";
    $("input").focus();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
