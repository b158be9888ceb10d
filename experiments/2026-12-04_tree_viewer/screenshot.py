"""PNG screenshots of a tree viewer page in Debian's headless Chromium, driven by Playwright.

    .venv/bin/python experiments/2026-12-04_tree_viewer/screenshot.py PAGE OUT.png [PROBLEM_ID [NODE_KIND]]

Opens PAGE, shows PROBLEM_ID (default: the first), clicks the first node of NODE_KIND (`correct`,
`wrong`, a node kind such as `reflect`; default: `correct`, else `wrong`) and saves the window.
Console errors are printed and make the script exit non-zero.
"""

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]

page_path, out = Path(sys.argv[1]).resolve(), sys.argv[2]
problem = sys.argv[3] if len(sys.argv) > 3 else None
wanted = sys.argv[4] if len(sys.argv) > 4 else None
with sync_playwright() as playwright:
    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
    page = browser.new_page(viewport={"width": 1680, "height": 1000})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(page_path.as_uri() + (f"#problem={problem}" if problem else ""))
    page.wait_for_selector("svg.tree .node")
    selectors = [f"svg.tree .node.{wanted}", f'svg.tree .node[data-kind="{wanted}"]'] if wanted else [
        "svg.tree .node.correct", "svg.tree .node.wrong"]
    for selector in selectors:
        if page.locator(selector).count():
            page.locator(selector).first.click()
            break
    page.screenshot(path=out)
    print(f"{out}: {page.locator('svg.tree .node').count()} nodes drawn; console errors: {errors}")
    browser.close()
    sys.exit(1 if errors else 0)
