// The page's shared state and constants (no DOM work here).
export const PROVIDER_NAMES = { gigachat: "GigaChat", qwen: "Qwen", auto: "Auto" };
export const ENDPOINTS = { gigachat: "/gigachat", qwen: "/qwen", auto: "/ask" };

export const FALLBACK_CONFIG = {
  default_system_prompt: "",
  qwen_defaults: { temperature: 0.4, top_p: 0.9, top_k: 60, repetition_penalty: 1.1, max_tokens: null },
  gigachat_model: "GigaChat",
  auth_required: false,
};

export const state = {
  config: FALLBACK_CONFIG,
  session: null,        // the conversation shown; new questions continue it
  sessionTitle: null,
  streaming: null,      // {controller, view} while an answer streams
  sessions: [],         // GET /history/sessions, most recent first
  searchSeq: 0,
  keyPrompt: null,      // the pending API-key dialog, shared by concurrent 401s
};

export function stopStreaming() {
  if (state.streaming) state.streaming.controller.abort();
}
