// Syntax highlighting of code blocks with the vendored highlight.js (its common languages).
// highlight.js returns HTML; it is parsed into an inert document (DOMParser runs no script and
// loads nothing) and only its text and <span class="hljs-..."> are copied into the page.
import hljs from "../vendor/highlight.min.js";

const CLASS_OK = /^[\w-]+$/;

function languageOf(lang) {
  const language = lang && hljs.getLanguage(lang);
  return language ? lang : null;
}

function copySafe(nodes) {
  const out = [];
  for (const node of nodes) {
    if (node.nodeType === Node.TEXT_NODE) {
      out.push(document.createTextNode(node.data));
    } else if (node.nodeType === Node.ELEMENT_NODE && node.tagName === "SPAN") {
      const span = document.createElement("span");
      const classes = String(node.getAttribute("class") || "").split(/\s+/).filter((c) => CLASS_OK.test(c));
      if (classes.length) span.className = classes.join(" ");
      span.append(...copySafe(node.childNodes));
      out.push(span);
    } else if (node.nodeType === Node.ELEMENT_NODE) {
      out.push(document.createTextNode(node.textContent));
    }
  }
  return out;
}

// Fills <code> with `code`, highlighted when `lang` is a language highlight.js knows; returns whether it was.
export function highlightInto(codeEl, code, lang) {
  const language = languageOf(lang);
  if (!language) {
    codeEl.textContent = code;
    return false;
  }
  const html = hljs.highlight(code, { language, ignoreIllegals: true }).value;
  const doc = new DOMParser().parseFromString(`<div>${html}</div>`, "text/html");
  codeEl.replaceChildren(...copySafe(doc.body.firstChild.childNodes));
  codeEl.classList.add("hljs");
  return true;
}
