// Layout: the sidebar as a drawer on narrow screens, and the light/dark theme (set before the first
// paint by theme-init.js; the toggle here overrides the system setting and is remembered).
import { $, storageGet, storageSet } from "./dom.js";

const THEME_STORAGE = "dualchat.theme";
const NARROW = window.matchMedia("(max-width: 700px)");
const SYSTEM_DARK = window.matchMedia("(prefers-color-scheme: dark)");

function openSidebar() {
  document.body.classList.add("sidebar-open");
  $("scrim").hidden = false;
  $("menu-btn").setAttribute("aria-expanded", "true");
  // the drawer is focusable once its slide-in has begun (it is visibility: hidden until then)
  const focusIn = () => { if (document.body.classList.contains("sidebar-open")) $("new-chat").focus(); };
  focusIn();
  if (document.activeElement !== $("new-chat")) requestAnimationFrame(() => requestAnimationFrame(focusIn));
}

export function closeSidebar(returnFocus = false) {
  const wasOpen = document.body.classList.contains("sidebar-open");
  document.body.classList.remove("sidebar-open");
  $("scrim").hidden = true;
  $("menu-btn").setAttribute("aria-expanded", "false");
  if (wasOpen && returnFocus) $("menu-btn").focus();
}

function currentTheme() {
  const stored = storageGet(THEME_STORAGE);
  if (stored === "light" || stored === "dark") return stored;
  return SYSTEM_DARK.matches ? "dark" : "light";
}

function applyTheme() {
  const theme = currentTheme();
  document.documentElement.dataset.theme = theme;
  const next = theme === "dark" ? "light" : "dark";
  $("theme-btn").setAttribute("aria-label", `Switch to the ${next} theme`);
  $("theme-btn").title = `Switch to the ${next} theme`;
  $("theme-btn").dataset.theme = theme;
}

export function bindLayout() {
  $("menu-btn").addEventListener("click", () => {
    if (document.body.classList.contains("sidebar-open")) closeSidebar(true); else openSidebar();
  });
  $("scrim").addEventListener("click", () => closeSidebar(true));
  NARROW.addEventListener("change", () => closeSidebar(false));
  $("theme-btn").addEventListener("click", () => {
    storageSet(THEME_STORAGE, currentTheme() === "dark" ? "light" : "dark");
    applyTheme();
  });
  SYSTEM_DARK.addEventListener("change", applyTheme);  // followed until the toggle is used
  applyTheme();
}
