// The settings panel: system prompt and sampling parameters (defaults from GET /config; only the
// values the user changed are kept in local storage and sent).
import { $, showBanner, storageGet, storageSet } from "./dom.js";
import { state } from "./state.js";

const PARAMS_STORAGE = "dualchat.params";
const PARAMS = ["temperature", "top_p", "top_k", "repetition_penalty", "max_tokens"];
const INT_PARAMS = new Set(["top_k", "max_tokens"]);
const GIGACHAT_PARAMS = new Set(["temperature", "top_p", "repetition_penalty", "max_tokens"]);

function storedParams() {
  try { return JSON.parse(storageGet(PARAMS_STORAGE) || "{}") || {}; } catch (e) { return {}; }
}

export function fillParams(useStored) {
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

// The sampling parameters for one request; Qwen's own (top_k) only when Qwen is asked by name.
export function samplingParams(provider) {
  const out = {};
  const defaults = state.config.qwen_defaults || {};
  for (const name of PARAMS) {
    if (provider !== "qwen" && !GIGACHAT_PARAMS.has(name)) continue;
    const raw = $(`p-${name}`).value.trim();
    if (raw === "") continue;
    const value = INT_PARAMS.has(name) ? parseInt(raw, 10) : parseFloat(raw);
    if (!Number.isFinite(value)) continue;
    if (defaults[name] !== null && defaults[name] !== undefined && Number(defaults[name]) === value) continue;
    out[name] = value;
  }
  return out;
}

export function openSettings(open) {
  $("settings").hidden = !open;
  $("settings-btn").setAttribute("aria-expanded", String(open));
  document.body.classList.toggle("settings-open", open);
  if (open) $("system-prompt").focus();
}

export function settingsValid() {
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

export function bindSettings() {
  $("settings-btn").addEventListener("click", () => openSettings($("settings").hidden));
  $("settings-close").addEventListener("click", () => { openSettings(false); $("settings-btn").focus(); });
  $("settings-form").addEventListener("input", saveParams);
  $("settings-form").addEventListener("submit", (ev) => ev.preventDefault());
  $("settings-reset").addEventListener("click", () => {
    storageSet(PARAMS_STORAGE, null);
    fillParams(false);
    $("system-prompt").value = state.config.default_system_prompt || "";
  });
}
