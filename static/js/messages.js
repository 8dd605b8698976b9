// The message views: questions (plain text, with Edit), answers (Markdown, with Regenerate, the route
// badge and the meta line). Edit and Regenerate are announced as events on #messages
// (RESEND_EVENT with {text}), which chat.js answers, so this module sends nothing itself.
import { $, button, el, formatSeconds } from "./dom.js";
import { renderMarkdown } from "./markdown.js";
import { PROVIDER_NAMES } from "./state.js";

export const RESEND_EVENT = "dualchat:resend";

const STATUS_BADGES = {
  cancelled: "Stopped",
  blocked: "Blocked by GigaChat's content filter",
  error: "Error",
};

function chatNearBottom() {
  const c = $("chat");
  return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
}

export function scrollToBottom(force) {
  const c = $("chat");
  if (force || chatNearBottom()) c.scrollTop = c.scrollHeight;
}

export function setEmpty() {
  $("empty").hidden = $("messages").childElementCount > 0;
}

function resend(from, text, how) {
  from.dispatchEvent(new CustomEvent(RESEND_EVENT, { bubbles: true, detail: { text, how } }));
}

function openEditor(msg, body, text) {
  const form = el("form", "edit-form");
  const ta = el("textarea", "edit-input");
  ta.value = text;
  ta.rows = Math.min(12, text.split("\n").length + 1);
  ta.setAttribute("aria-label", "Edit the question");
  const actions = el("div", "edit-actions");
  const cancel = button("btn btn-ghost", "Cancel");
  const send = el("button", "btn btn-primary", "Send as new question");
  send.type = "submit";
  actions.append(cancel, send);
  form.append(ta, actions);
  const close = () => { form.remove(); body.hidden = false; msg.querySelector(".msg-edit").focus(); };
  cancel.addEventListener("click", close);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    if (!ta.value.trim()) return;
    const edited = ta.value;
    close();
    resend(msg, edited, "edit");
  });
  ta.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { ev.preventDefault(); ev.stopPropagation(); close(); }
    else if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); form.requestSubmit(); }
  });
  body.hidden = true;
  msg.insertBefore(form, body.nextSibling);
  ta.focus();
  ta.setSelectionRange(ta.value.length, ta.value.length);
}

export function addUserMessage(text) {
  const msg = el("div", "msg msg-user");
  msg.dataset.role = "user";
  const body = el("div", "msg-body", text);  // questions stay plain text
  const actions = el("div", "msg-actions");
  const edit = button("msg-action msg-edit", "Edit", "Edit this question and send it again");
  edit.addEventListener("click", () => { if (!msg.querySelector(".edit-form")) openEditor(msg, body, text); });
  actions.append(edit);
  msg.append(body, actions);
  $("messages").append(msg);
  setEmpty();
  return msg;
}

export function addAssistantMessage(provider, question) {
  const msg = el("div", "msg msg-assistant");
  msg.dataset.role = "assistant";
  msg.dataset.provider = provider;
  msg.dataset.status = "streaming";
  const head = el("div", "msg-head");
  const who = el("span", `msg-who who-${provider}`, PROVIDER_NAMES[provider] || provider);
  const route = el("span", "badge badge-route");
  route.hidden = true;
  const badge = el("span", "badge");
  badge.hidden = true;
  head.append(who, route, badge);
  const body = el("div", "msg-body md");
  const typing = el("div", "typing");
  typing.append(el("span"), el("span"), el("span"));
  typing.setAttribute("role", "img");
  typing.setAttribute("aria-label", "Waiting for the answer");
  body.append(typing);
  const error = el("div", "msg-error");
  error.setAttribute("role", "alert");
  error.hidden = true;
  const foot = el("div", "msg-foot");
  const meta = el("div", "msg-meta");
  const regen = button("msg-action msg-regen", "Regenerate", "Regenerate this answer");
  regen.addEventListener("click", () => resend(msg, question, "regenerate"));
  foot.append(meta, regen);
  msg.append(head, body, error, foot);
  $("messages").append(msg);
  setEmpty();
  return { msg, who, route, badge, body, error, meta, text: "", blocks: [], renderPending: false };
}

function renderView(view) {
  view.renderPending = false;
  const stick = chatNearBottom();
  const streaming = view.msg.dataset.status === "streaming";
  for (const extra of view.body.querySelectorAll(":scope > .cursor, :scope > .typing")) {
    if (view.text || !streaming) extra.remove();
  }
  if (view.text) renderMarkdown(view.body, view.text, view.blocks);
  if (streaming && view.text) view.body.append(el("span", "cursor"));
  if (stick) scrollToBottom(true);
}

export function scheduleRender(view) {
  if (view.renderPending) return;
  view.renderPending = true;
  requestAnimationFrame(() => renderView(view));
}

// Who answered (GET /config's "auto" picks a provider) and why (route: code, general, private, fallback: …).
export function showRoute(view, info) {
  const provider = info.provider;
  if (provider && provider !== view.msg.dataset.provider && PROVIDER_NAMES[provider]) {
    view.msg.dataset.provider = provider;
    view.who.className = `msg-who who-${provider}`;
    view.who.textContent = PROVIDER_NAMES[provider];
  }
  if (info.route) {
    view.route.textContent = String(info.route);
    view.route.title = `Routed: ${info.route}`;
    view.route.hidden = false;
  }
}

export function finishView(view, status, info = {}) {
  view.msg.dataset.status = status;
  showRoute(view, info);
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
