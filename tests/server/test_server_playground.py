"""The playground page in a real headless Chromium (Debian's ``chromium`` driven by Playwright).

The page must stream the same text as the API, colour each piece by the member that
gave the chosen candidate the highest probability, and show the union with every
member's probabilities on hover.  A screenshot goes to ``test-artifacts/``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
PROMPT = "Question: What is the largest planet in the solar system?\nAnswer:"
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():  # `make test` installs it; a bare pytest run must say why it cannot start
        raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install -y chromium (make test does this when root)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1100, "height": 1000})
        pg.errors = []
        pg.on("pageerror", lambda e: pg.errors.append(str(e)))
        outside = []

        def only_loopback(route):
            if route.request.url.startswith(server.url):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        pg.route("**/*", only_loopback)
        pg.outside = outside
        yield pg
        browser.close()


def expected_steps(server) -> list[dict]:
    r = httpx.post(
        f"{server.v1}/completions",
        json={"model": server.model, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "unite": {"union": True}},
        timeout=120,
    )
    r.raise_for_status()
    body = r.json()
    return body["choices"][0]["text"], [s for s in body["unite"]["choices"][0]["steps"] if not s["end"]]


def test_playground_streams_colours_and_explains(server, page, artifacts):
    want_text, steps = expected_steps(server)
    members = [m["name"] for m in server.health()["members"]]
    page.goto(server.url + "/")
    page.wait_for_selector("#legend .swatch")
    assert page.locator("#model").inner_text() == server.model
    page.fill("#prompt", PROMPT)
    page.fill("#max_tokens", str(MAX_TOKENS))
    page.click("#generate")
    page.wait_for_selector("#output .piece", timeout=60_000)  # the first piece arrives while the rest is generated
    page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=180_000)

    pieces = page.eval_on_selector_all(
        "#output .piece",
        "els => els.map(e => ({text: e.textContent, member: e.dataset.member, step: Number(e.dataset.step),"
        " cls: e.className, bg: getComputedStyle(e).backgroundColor}))",
    )
    assert "".join(p["text"] for p in pieces) == want_text
    by_index = {s["index"]: s for s in steps}
    for p in pieces:
        step = by_index[p["step"]]
        leader = max(members, key=lambda m: step["member_probs"][m])
        assert p["member"] == leader, (p, step["member_probs"])
        assert p["cls"] == f"piece m{members.index(leader)}"
        assert p["bg"] not in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")
    colours = {p["member"]: p["bg"] for p in pieces}
    assert len(set(colours.values())) == len(colours)  # one colour per member
    assert len(colours) == 2, f"this prompt is chosen so that both members lead some piece: {colours}"

    # Hover the piece with the largest union and read the tooltip.
    target = max(range(len(pieces)), key=lambda i: by_index[pieces[i]["step"]]["union_size"])
    step = by_index[pieces[target]["step"]]
    page.locator("#output .piece").nth(target).hover()
    tip = page.locator("#tooltip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert f"union of {step['union_size']} candidates" in text
    assert all(m in text for m in members)
    assert page.locator("#tooltip tbody tr").count() == step["union_size"]
    assert page.locator("#tooltip tr.chosen").count() >= 1
    page.screenshot(path=str(artifacts / "playground.png"))
    assert (artifacts / "playground.png").stat().st_size > 10_000
    assert page.errors == [] and page.outside == []


def test_playground_shows_api_errors(server, page):
    page.goto(server.url + "/")
    page.wait_for_selector("#legend .swatch")
    page.fill("#prompt", "word " * 3000)
    page.click("#generate")
    page.wait_for_function("document.getElementById('status').textContent.startsWith('error')", timeout=60_000)
    assert "context" in page.locator("#status").inner_text()
    assert shutil.which("chromium") or CHROMIUM.exists()
