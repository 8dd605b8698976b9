"""The browser side of the web page tests: Debian's Chromium driven by Playwright, one context per test
that fails the test on any script error on the page, and axe-core (tests/vendor/axe.min.js)."""
import os
import tempfile

import pytest

from helpers import REPO_ROOT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = os.path.join(REPO_ROOT, "test-artifacts")
# The README's screenshots are taken by the page tests: into docs/screenshots with UPDATE_SCREENSHOTS=1, else
# into a scratch folder (a plain test run leaves the work tree as it was).
SCREENSHOTS = (os.path.join(REPO_ROOT, "docs", "screenshots") if os.environ.get("UPDATE_SCREENSHOTS") == "1"
               else os.path.join(tempfile.gettempdir(), "dual-ai-chat-screenshots"))
AXE = os.path.join(REPO_ROOT, "tests", "vendor", "axe.min.js")  # axe-core, for the accessibility tests only
XSS = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
LAST_ASSISTANT = "() => [...document.querySelectorAll('.msg-assistant')].pop()"


# -- the browser ---------------------------------------------------------------------------------

def launch_browser():
    """Debian's Chromium, driven by Playwright: yields the browser (conftest.py's `browser` fixture)."""
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing, so the web page cannot be tested: install Debian's Chromium "
                    f"(`make chromium`, i.e. `apt-get install -y chromium`).", pytrace=False)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Web:
    """One browser context + page on one gateway, failing the test on any uncaught script error."""

    def __init__(self, browser, base_url, **context_args):
        context_args.setdefault("viewport", {"width": 1280, "height": 800})
        # The tests' own wait_for_function() needs eval, which the page's CSP forbids;
        # test_page_runs_under_its_csp checks the page itself with the CSP enforced.
        context_args.setdefault("bypass_csp", True)
        self.base_url = base_url
        self.context = browser.new_context(**context_args)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and "Failed to load resource" not in m.text
                     and self.errors.append(m.text))

    def open(self, ready=True):
        self.page.goto(self.base_url + "/")
        if ready:
            self.page.wait_for_selector("body[data-ready='1']", state="attached")
        return self.page

    def model(self, name):
        self.page.click(f".model-switch label:has(input[value='{name}'])")
        assert self.page.is_checked(f"input[name=model][value='{name}']")

    def set_param(self, name, value):
        p = self.page
        if p.is_hidden("#settings"):
            p.click("#settings-btn")
        p.fill(f"#p-{name}", str(value))
        p.click("#settings-close")

    def ask(self, text):
        self.page.fill("#input", text)
        self.page.press("#input", "Enter")

    def wait_answer(self, timeout=30_000):
        """Waits for the last answer to finish streaming; returns (status, text, error, meta)."""
        self.page.wait_for_function(f"() => {{ const m = ({LAST_ASSISTANT})(); "
                                    f"return m && m.dataset.status !== 'streaming'; }}", timeout=timeout)
        return self.page.evaluate(f"""() => {{ const m = ({LAST_ASSISTANT})();
            return [m.dataset.status, m.querySelector('.msg-body').textContent,
                    m.querySelector('.msg-error').textContent, m.querySelector('.msg-meta').textContent]; }}""")

    def session(self):
        h = self.page.evaluate("location.hash")
        assert h.startswith("#c/"), h
        return h[3:]

    def close(self):
        self.context.close()
        assert not self.errors, f"script errors on the page: {self.errors}"

    def run_axe(self):
        """axe-core's WCAG 2 A/AA rules on the page as it is; returns the serious and critical violations."""
        self.page.add_script_tag(path=AXE)
        result = self.page.evaluate("""async () => {
            // colours mid-transition (a theme switch fades) are neither theme's: judge the settled page
            await Promise.all(document.getAnimations().map(a => a.finished.catch(() => null)));
            const r = await axe.run(document, {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a',
                                                                               'wcag21aa', 'best-practice']}});
            return r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                           nodes: v.nodes.slice(0, 5).map(n => n.target.join(' ') + ': '
                                                                           + n.failureSummary)})); }""")
        return [v for v in result if v["impact"] in ("serious", "critical")]
