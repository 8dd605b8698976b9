// Markdown answers: the vendored marked lexer turns the text into tokens, and this module builds the
// DOM from them with createElement/textContent only, so it is safe by construction: raw HTML in an
// answer is shown as text, links go only to http(s)/mailto (opened with rel=noopener), images are
// never loaded (shown as links). Rendering is incremental: a top-level block whose source did not
// change keeps its DOM node, so a streaming answer re-renders only its last block (no flicker, and a
// focused Copy button keeps its focus).
import { Lexer } from "../vendor/marked.esm.js";
import { button, copyText, el } from "./dom.js";
import { highlightInto } from "./codehl.js";

const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);

function safeUrl(href) {
  try {
    const url = new URL(String(href || "").trim());
    return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
  } catch (e) {
    return null;  // relative or malformed: not a link
  }
}

function link(href, children, title) {
  const url = safeUrl(href);
  if (!url) {
    const span = el("span", "md-link-off");
    span.append(...children);
    return span;
  }
  const a = el("a");
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  if (title) a.title = String(title);
  a.append(...children);
  return a;
}

function inline(tokens) {
  const out = [];
  for (const t of tokens || []) out.push(inlineToken(t));
  return out;
}

function wrap(tag, className, tokens) {
  const node = el(tag, className);
  node.append(...inline(tokens));
  return node;
}

function inlineToken(t) {
  switch (t.type) {
    case "strong": return wrap("strong", null, t.tokens);
    case "em": return wrap("em", null, t.tokens);
    case "del": return wrap("del", null, t.tokens);
    case "codespan": return el("code", "inline-code", t.text);
    case "br": return el("br");
    case "link": return link(t.href, inline(t.tokens), t.title);
    case "image": return link(t.href, [document.createTextNode(`[image: ${t.text || t.href}]`)], t.title);
    case "text": return t.tokens ? wrap("span", null, t.tokens) : document.createTextNode(t.text);
    case "escape": return document.createTextNode(t.text);
    default: return document.createTextNode(t.raw || t.text || "");  // html and anything unknown: as text
  }
}

const codeOf = new WeakMap();  // a code block's text, for its Copy button (it grows while the answer streams)

function codeBlock(lang, code) {
  const box = el("div", "code-block");
  codeOf.set(box, code);
  const head = el("div", "code-head");
  head.append(el("span", "code-lang", lang || "code"));
  const btn = button("copy-btn", "Copy", `Copy ${lang || ""} code`.replace("  ", " "));
  btn.addEventListener("click", async () => {
    const ok = await copyText(codeOf.get(box));
    btn.textContent = ok ? "Copied" : "Copy failed";
    btn.classList.toggle("copied", ok);
    setTimeout(() => { btn.textContent = "Copy"; btn.classList.remove("copied"); }, 1500);
  });
  head.append(btn);
  const pre = el("pre");
  pre.tabIndex = 0;  // a long line scrolls sideways: the keyboard can scroll it too
  pre.setAttribute("aria-label", `${lang || "Code"} block`);
  const codeEl = el("code", lang ? `lang-${lang.replace(/[^\w-]/g, "")}` : "");
  codeEl.dataset.lang = lang || "";
  highlightInto(codeEl, code, lang);
  pre.append(codeEl);
  box.append(head, pre);
  return box;
}

function codeLang(t) {
  return (t.lang || "").trim().split(/\s/)[0];
}

function updateCode(box, code) {
  codeOf.set(box, code);
  const codeEl = box.querySelector("pre > code");
  highlightInto(codeEl, code, codeEl.dataset.lang);
}

function table(t) {
  const node = el("table", "md-table");
  const cell = (tag, c, i) => {
    const td = wrap(tag, null, c.tokens);
    const align = t.align && t.align[i];
    if (align) td.dataset.align = align;
    return td;
  };
  const head = el("thead");
  const hr = el("tr");
  t.header.forEach((c, i) => hr.append(cell("th", c, i)));
  head.append(hr);
  const body = el("tbody");
  for (const row of t.rows) {
    const tr = el("tr");
    row.forEach((c, i) => tr.append(cell("td", c, i)));
    body.append(tr);
  }
  node.append(head, body);
  const scroller = el("div", "md-table-wrap");
  scroller.append(node);
  return scroller;
}

function list(t) {
  const node = el(t.ordered ? "ol" : "ul", "md-list");
  if (t.ordered && t.start !== "" && t.start !== 1) node.start = Number(t.start) || 1;
  for (const item of t.items) {
    const li = el("li");
    if (item.task) {
      li.className = "md-task";
      li.append(document.createTextNode(item.checked ? "☑ " : "☐ "));
    }
    li.append(...blocks(item.tokens));
    node.append(li);
  }
  return node;
}

function block(t) {
  switch (t.type) {
    case "paragraph": return wrap("p", "md-text", t.tokens);
    case "heading": return wrap(`h${Math.min(Math.max(t.depth, 1), 6)}`, "md-heading", t.tokens);
    case "code": return codeBlock(codeLang(t), t.text);
    case "list": return list(t);
    case "table": return table(t);
    case "blockquote": { const q = el("blockquote"); q.append(...blocks(t.tokens)); return q; }
    case "hr": return el("hr");
    case "text": return t.tokens ? wrap("span", "md-inline", t.tokens) : el("span", "md-inline", t.text);
    default: return el("p", "md-text md-raw", t.raw || t.text || "");  // html blocks: as text
  }
}

function blocks(tokens) {
  return (tokens || []).filter((t) => t.type !== "space").map(block);
}

// Renders `text` into `container`; `cache` (an array kept by the caller) maps each top-level block's
// source to its node, so unchanged blocks are not rebuilt.
export function renderMarkdown(container, text, cache) {
  let tokens;
  try {
    tokens = new Lexer({ gfm: true, breaks: false }).lex(text).filter((t) => t.type !== "space");
  } catch (e) {
    tokens = [{ type: "paragraph", raw: text, tokens: [{ type: "text", text }] }];
  }
  tokens.forEach((t, i) => {
    const old = cache[i];
    const kept = old && old.node.parentNode === container;
    if (kept && old.raw === t.raw) return;
    if (kept && t.type === "code" && old.type === "code" && old.lang === t.lang) {
      updateCode(old.node, t.text);  // a growing code block keeps its node (and its scroll position)
      old.raw = t.raw;
      return;
    }
    const node = block(t);
    if (kept) container.replaceChild(node, old.node);
    else container.append(node);
    cache[i] = { raw: t.raw, node, type: t.type, lang: t.lang };
  });
  for (const old of cache.splice(tokens.length)) old.node.remove();
}
