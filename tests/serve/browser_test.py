"""The /ui trace viewer in a real headless Chromium (a separate command; not collected by the normal suite).

    .venv/bin/python -m pytest -q tests/serve/browser_test.py        # or: make browser-test

Needs Debian's chromium (apt-get install -y chromium) and `pip install playwright` (no `playwright install`: the
system browser is used). Skipped when either is missing. The second test runs the real default stack and saves
benchmarks/results/serve/viewer.png, the screenshot committed with the docs.
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
from pathlib import Path

import httpx
import pytest
from live_server import running_server

from fslm.serve import ServeSettings, create_app

CHROMIUM = os.environ.get("FSLM_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "serve" / "viewer.png"

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not shutil.which(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)", allow_module_level=True)


@pytest.fixture()
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


def submit(page, prompt: str, timeout_ms: int) -> None:
    previous = page.locator("#view").get_attribute("data-trace")
    page.fill("#prompt", prompt)
    page.click("#run")
    page.wait_for_function(
        "([prev]) => { const v = document.getElementById('view'); return v.dataset.trace && v.dataset.trace !== prev; }",
        arg=[previous],
        timeout=timeout_ms,
    )


def check_cards(page, result) -> None:
    cards = page.locator("li.stage")
    assert cards.count() == len(result.trace)
    for i, rec in enumerate(result.trace):
        card = cards.nth(i)
        assert card.get_attribute("data-stage") == rec.stage
        assert card.locator(".num").inner_text() == str(i + 1)
        assert card.locator(".output").inner_text().strip() == (rec.output or "(no output)")
        assert f"{rec.tokens_in} → {rec.tokens_out} tok" in card.locator(".stage-head").inner_text()
        assert not card.locator("pre").is_visible()  # the input starts collapsed
    assert page.locator("[data-testid=answer] .answer-text").inner_text().strip() == (result.answer or "(empty answer)")


def test_viewer_shows_stage_cards_and_history(browser, tiny_stack):
    first, second = "What is the capital of France?", "Which planet is largest?"
    expected = {p: tiny_stack.run(p) for p in (first, second)}
    with running_server(create_app(tiny_stack, ServeSettings())) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors, blocked, posts = [], [], []
        page.on("pageerror", lambda err: errors.append(str(err)))
        # the page's Content-Security-Policy must block nothing the viewer itself does
        page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)
        page.on("request", lambda req: posts.append(req.post_data) if req.method == "POST" else None)
        page.goto(url + "/ui")
        page.wait_for_selector("#pipeline .chip")
        assert page.locator("#pipeline .chip").all_inner_texts() == ["tiny", "Intent", "Facts", "Answer"]
        submit(page, first, 60_000)
        check_cards(page, expected[first])
        card = page.locator("li.stage").first
        card.locator("summary").click()
        assert first in card.locator("pre").inner_text()  # the exact stage input, expanded on demand
        submit(page, second, 60_000)
        check_cards(page, expected[second])
        page.wait_for_function("() => document.querySelectorAll('#history li[data-id]').length === 2")
        items = page.locator("#history li[data-id]")
        assert items.nth(0).locator(".h-prompt").inner_text() == second  # newest first
        items.nth(1).click()  # browse back to the first trace
        page.wait_for_function(
            f"() => document.querySelector('.question') && document.querySelector('.question').textContent === {first!r}"
        )
        check_cards(page, expected[first])
        assert page.locator("#history li.active .h-prompt").inner_text() == first
        page.reload()  # a deep link (#trace=<id>) reopens the same trace
        page.wait_for_selector("li.stage")
        check_cards(page, expected[first])
        assert errors == [] and blocked == []
        assert posts and all('"stream":true' in p for p in posts)  # the viewer reads the answer as it streams


def test_viewer_with_api_key_prompts_for_it(browser, tiny_stack):
    with running_server(create_app(tiny_stack, ServeSettings(api_key="k-123"))) as url:
        page = browser.new_page()
        page.goto(url + "/ui")
        page.wait_for_selector("#keybox.open")  # history fetch got 401: the key box opens
        assert "API key" in page.locator("#status").inner_text()
        page.fill("#key", "k-123")
        page.click("#save-key")
        submit(page, "Two plus two?", 60_000)
        assert page.locator("li.stage").count() == 3


def logged_run(prompt: str, answer: str, created: float) -> None:
    """A run as `fslm run` writes it to the log the server reads."""
    from fslm.logs import record, stack_entry

    ident = {"stack": "cli-stack", "config_sha256": None, "adapters": {}, "engine": {"model_ref": "m", "dtype": "f"}}
    entry = stack_entry("run", prompt, ident, started=created, wall_seconds=0.5)
    entry["answer"] = answer
    entry["trace"] = [
        {
            "stage": "answer",
            "input": "in",
            "output": answer,
            "tokens_in": 3,
            "tokens_out": 2,
            "seconds": 0.5,
            "adapter": None,
            "finish_reason": "stop",
        }
    ]
    assert record(entry) is not None


def history_prompts(page) -> list[str]:
    return page.locator("#history li[data-id] .h-prompt").all_inner_texts()


def test_viewer_pages_and_searches_the_run_log(browser, tiny_stack):
    import time

    now = time.time()
    for i in range(25):
        logged_run("a question about zebras" if i == 7 else f"logged question {i}", f"answer {i}", now - 100 + i)
    with running_server(create_app(tiny_stack, ServeSettings())) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda err: errors.append(str(err)))
        page.goto(url + "/ui")
        page.wait_for_function("() => document.querySelectorAll('#history li[data-id]').length === 20")
        prompts = history_prompts(page)
        assert "logged question 24" in prompts[0] and "logged question 5" in prompts[-1]  # newest first, one page
        assert page.locator("#history li[data-id] .kind").first.inner_text() == "run"  # not a served request
        assert page.locator("#newer").is_disabled() and page.locator("#older").is_enabled()
        assert page.locator("#page-info").inner_text() == "1–20"

        page.click("#older")
        page.wait_for_function("() => document.querySelectorAll('#history li[data-id]').length === 5")
        assert "logged question 4" in history_prompts(page)[0] and "logged question 0" in history_prompts(page)[-1]
        assert page.locator("#older").is_disabled() and page.locator("#newer").is_enabled()
        assert page.locator("#page-info").inner_text() == "21–25"
        page.locator("#history li[data-id]").nth(2).click()  # a CLI run opens like a served one
        page.wait_for_selector("li.stage")
        assert page.locator("li.stage .output").inner_text() == "answer 2"
        assert page.locator("[data-testid=answer] .answer-text").inner_text() == "answer 2"

        page.fill("#search", "zebras")
        page.wait_for_function("() => document.querySelectorAll('#history li[data-id]').length === 1")
        assert "a question about zebras" in history_prompts(page)[0]
        assert page.locator("#older").is_disabled() and page.locator("#newer").is_disabled()
        page.fill("#search", "no such words anywhere")
        page.wait_for_function("() => document.getElementById('history').textContent.includes('No trace matches')")
        page.fill("#search", "")
        page.wait_for_function("() => document.querySelectorAll('#history li[data-id]').length === 20")

        submit(page, "Which planet is largest?", 60_000)  # a served request goes on top of the same log
        page.wait_for_function(
            "() => document.querySelector('#history li[data-id] .h-prompt').textContent === 'Which planet is largest?'"
        )
        assert page.locator("#history li[data-id]").first.locator(".kind").count() == 0
        assert page.locator("#page-info").inner_text() == "1–20"
        assert errors == []


@pytest.mark.slow
def test_real_default_stack_screenshot(browser):
    """The committed screenshot: a real trace from the default stack on SmolLM2-135M-Instruct."""
    from fslm.errors import FslmError
    from fslm.stack import Stack

    try:
        stack = Stack.load()
    except FslmError as err:
        pytest.skip(f"default model not installed: {err}")
    prompt = "Why is the sky blue?"
    others = ["What is the boiling point of water at sea level?", "Name three primary colors."]
    with running_server(create_app(stack, ServeSettings(batch_wait_ms=500))) as url:
        page = browser.new_page(viewport={"width": 1360, "height": 1000})
        page.goto(url + "/ui")
        page.wait_for_selector("#pipeline .chip")
        with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two API clients share the viewer's batch
            body = lambda p: {"messages": [{"role": "user", "content": p}]}  # noqa: E731
            futures = [pool.submit(httpx.post, url + "/v1/chat/completions", json=body(p), timeout=900) for p in others]
            submit(page, prompt, 900_000)
            assert all(f.result().status_code == 200 for f in futures)
        cards = page.locator("li.stage")
        assert [cards.nth(i).get_attribute("data-stage") for i in range(cards.count())] == stack.stage_names
        trace = httpx.get(url + "/v1/traces", timeout=10).json()["data"]
        assert {t["prompt"] for t in trace} == {prompt, *others}
        record = httpx.get(
            f"{url}/v1/traces/{trace[0]['id']}"
            if trace[0]["prompt"] == prompt
            else f"{url}/v1/traces/{next(t['id'] for t in trace if t['prompt'] == prompt)}",
            timeout=10,
        ).json()
        for i, stage in enumerate(record["stages"]):
            assert cards.nth(i).locator(".output").inner_text().strip() == (stage["output"] or "(no output)")
        page.locator("#refresh").click()
        page.wait_for_function("() => document.querySelectorAll('#history li[data-id]').length === 3")
        cards.first.locator("summary").click()  # show one stage's exact input in the screenshot
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert SCREENSHOT.stat().st_size > 20_000
