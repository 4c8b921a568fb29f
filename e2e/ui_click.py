#!/usr/bin/env python3
"""Clicks a node of pilotfish's dashboard graph in a real browser (Playwright driving
Debian's Chromium) and prints the panel it opens.

    python3 e2e/ui_click.py URL NODE_ID SCREENSHOT.png
"""
import sys

from playwright.sync_api import sync_playwright

url, node, shot = sys.argv[1:4]
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url)
    sel = f'g.node[data-id="{node}"]'
    page.wait_for_selector(sel, timeout=20000)
    page.click(sel)
    page.wait_for_selector("#panel-title", timeout=10000)
    print("TITLE:", page.inner_text("#panel-title"))
    print(page.inner_text("#panel"))
    page.screenshot(path=shot)
    browser.close()
