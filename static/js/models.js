// The model switch: GigaChat, Qwen, and Auto (POST /ask) when GET /config lists it.
import { $ } from "./dom.js";
import { PROVIDER_NAMES, state } from "./state.js";

// GET /config lists "auto" among the choices when the gateway can route: as a configured provider
// ({"providers": {"auto": {...}}}) or in a list of model choices ({"models": [..., "auto"]}).
function autoAvailable(config) {
  const providers = config.providers || {};
  if (providers.auto) return providers.auto.configured !== false;
  return ["models", "choices"].some((k) => Array.isArray(config[k]) && config[k].includes("auto"));
}

export function currentModel() {
  const checked = document.querySelector('input[name="model"]:checked');
  return checked ? checked.value : "gigachat";
}

export function updatePlaceholder() {
  const model = currentModel();
  $("input").placeholder = model === "auto" ? "Message (Auto picks the model)…" : `Message ${PROVIDER_NAMES[model]}…`;
}

export function setModel(provider) {
  const radio = document.querySelector(`input[name="model"][value="${provider in PROVIDER_NAMES ? provider : "gigachat"}"]`);
  if (radio && !radio.closest("label").hidden) radio.checked = true;
  updatePlaceholder();
}

// The choice a new page opens on: the gateway's default_provider, else Auto when it is offered; else the
// current one if its provider is configured, else the first that is (the demo has no GigaChat key).
export function defaultModel() {
  const providers = state.config.providers || {};
  const works = (name) => !providers[name] || providers[name].configured;
  const preferred = state.config.default_provider;
  if (preferred in PROVIDER_NAMES && (preferred !== "auto" || autoAvailable(state.config)) && works(preferred)) {
    return preferred;
  }
  if (autoAvailable(state.config)) return "auto";
  const current = currentModel();
  return works(current) ? current : (["gigachat", "qwen"].find(works) || current);
}

export function bindModels() {
  $("auto-choice").hidden = !autoAvailable(state.config);
  for (const radio of document.querySelectorAll('input[name="model"]')) radio.addEventListener("change", updatePlaceholder);
}
