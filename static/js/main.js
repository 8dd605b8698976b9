// Dual AI Chat web page: ES modules, no build step, no external resources (the CSP allows only 'self').
import { getJSON, KEY_SAVED_EVENT, KEY_STORAGE } from "./api.js";
import { bindChat } from "./chat.js";
import { bindConversations, openConversation, refreshSidebar } from "./conversations.js";
import { $, hideBanner, showBanner, tabSet } from "./dom.js";
import { bindLayout, closeSidebar } from "./layout.js";
import { setEmpty } from "./messages.js";
import { bindModels, defaultModel, setModel, updatePlaceholder } from "./models.js";
import { bindSettings, fillParams, openSettings } from "./settings.js";
import { FALLBACK_CONFIG, state } from "./state.js";
import { bindStatus, pollStatus } from "./status.js";

// The header's account slot: who GET /whoami says this tab's key belongs to (hidden when keyless).
async function showAccount() {
  let name = null;
  try { name = (await getJSON("/whoami", false)).user; } catch (e) { /* no key yet: nobody signed in */ }
  $("account").hidden = !name;
  $("account-name").textContent = name ? String(name) : "";
}

function bind() {
  bindLayout();
  bindChat();
  bindConversations();
  bindSettings();
  bindStatus();
  $("sign-out").addEventListener("click", () => {  // forget this tab's key; the reloaded page asks again
    tabSet(KEY_STORAGE, null);
    location.reload();
  });
  document.addEventListener(KEY_SAVED_EVENT, showAccount);
  $("banner-close").addEventListener("click", () => { hideBanner(); $("input").focus(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key !== "Escape" || ev.defaultPrevented) return;
    if (!$("settings").hidden) { openSettings(false); $("settings-btn").focus(); }
    closeSidebar(true);
  });
}

// With a key set, /config needs it too: its 401 asks for the key (getJSON), then it is read again.
async function loadConfig() {
  try {
    state.config = { ...FALLBACK_CONFIG, ...(await getJSON("/config")) };
  } catch (e) {
    if (e.status === 401) showBanner(e.message);  // the key dialog was cancelled
    /* otherwise keep the built-in defaults */
  }
}

async function init() {
  bind();
  await loadConfig();
  bindModels();
  await showAccount();
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

init();
