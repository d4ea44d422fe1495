"""The web console in a real browser during a real call (issue 15, "Must show" 1).

Debian's headless Chromium, driven through Playwright's Python API (no browser download),
logs in to /console with the API key. A baresip caller rings the local voice agent (Silero
VAD, Whisper tiny, a scripted OpenAI-compatible LLM on loopback, Piper) and asks a question.
The page must show the live call, the caller's and the agent's transcript lines as they are
spoken, and the turn's latency waterfall with its stages; its hang-up button must end the SIP
call (baresip gets the BYE). Afterwards the history lists the call with its recording, which
plays in the page for as long as the call lasted. Screenshots go to the test's folder; with
UPDATE_SCREENSHOTS set, the call page's also replaces docs/console.png (the README's).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import repo_root
from tests.e2e.harness import callgate
from tests.e2e.livecall import baresip_call, silence, speech, wait_logged, write_wav
from tests.e2e.test_observe_metrics import scrape, value
from tests.engines.peer import PeerState, Reply, serve

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

API_KEY = "sk-callgate-console-test"
QUESTION = "what is the weather like today"
ANSWER = ["It is sunny ", "and warm today."]
CHROMIUM = "/usr/bin/chromium"
# Root in a container: no sandbox; nothing that phones home or updates itself.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # The test starts the recording's playback itself, with no click to count as a
         # gesture; muted, playback runs on a fake audio sink (there is no sound card).
         "--autoplay-policy=no-user-gesture-required", "--mute-audio"]
WAIT_MS = 45_000


@pytest.fixture
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Chromium is not installed (Debian package chromium)")
    profile = tempfile.mkdtemp(prefix="callgate-chromium-")
    try:
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
                viewport={"width": 1280, "height": 860})
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_console_follows_a_live_call(tmp_path: Path, browser: object) -> None:
    idle = write_wav(tmp_path / "idle.wav", silence(90.0))
    question = write_wav(tmp_path / "question.wav", speech(QUESTION, tail=60.0))
    state = PeerState(replies=[Reply(pieces=list(ANSWER))])
    session = {"type": "realtime", "model": "local",
               "instructions": "You are a weather bot."}
    with serve(state) as llm_url, \
            callgate(tmp_path, default_session=json.dumps(session), llm_base_url=llm_url,
                     llm_model="peer-model", api_key=API_KEY, record_calls="true") as gw:
        page = browser.new_page()  # type: ignore[attr-defined]
        page.set_default_timeout(WAIT_MS)
        page.goto(f"{gw.http}/console")
        page.fill("#key", "not-the-key")
        page.click("#login-form button")
        page.wait_for_selector("#login-error:has-text('not accepted')")
        page.fill("#key", API_KEY)
        page.click("#login-form button")
        page.wait_for_selector("#live:not([hidden])")
        assert API_KEY not in page.url

        with baresip_call(gw, tmp_path / "caller", idle) as caller:
            # The live call appears; its page opens from the row.
            page.wait_for_selector("#live-calls tr[data-call-id]")
            call_id = page.get_attribute("#live-calls tr[data-call-id]", "data-call-id")
            assert call_id and call_id.startswith("rtc_")
            page.wait_for_selector(f"#live-calls tr[data-call-id='{call_id}'] "
                                   "td:has-text('local')")
            page.screenshot(path=str(tmp_path / "live.png"))
            # The list is redrawn every second: click by selector, not by a held element.
            page.click(f"#live-calls tr[data-call-id='{call_id}']")
            page.wait_for_selector("#call:not([hidden])")
            wait_logged(gw, "realtime_session_started", timeout=30)
            caller.say(question)

            # Both sides of the conversation show up as they are spoken.
            page.wait_for_selector("#transcript li.caller")
            assert "weather" in page.inner_text("#transcript li.caller").lower()
            page.wait_for_selector("#transcript li.agent:not(.partial):has-text('sunny')")
            # The turn's waterfall has its stages.
            page.wait_for_selector("#waterfall .turn")
            stages = page.eval_on_selector_all("#waterfall .seg",
                                               "els => els.map(e => e.dataset.stage)")
            assert {"turn_detection", "stt", "llm_first_token", "tts_first_audio"} <= set(
                stages), stages
            label = page.inner_text("#waterfall .turn-label")
            assert "voice to voice" in label, label
            page.screenshot(path=str(tmp_path / "console.png"))
            if os.environ.get("UPDATE_SCREENSHOTS"):  # refresh the README's picture
                shutil.copy(tmp_path / "console.png", repo_root() / "docs" / "console.png")
            page.set_viewport_size({"width": 390, "height": 844})
            page.screenshot(path=str(tmp_path / "console-phone.png"))
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 400, f"the call page is {width}px wide on a phone"
            page.set_viewport_size({"width": 1280, "height": 860})

            # Hang up from the page: the caller gets the BYE.
            page.click("#hangup")
            caller.wait_ended(timeout=15)
            # baresip's word for a BYE from the far end (re closes the session with ECONNRESET).
            assert "session closed: Connection reset by peer" in caller.log
            assert any('reason="hangup requested"' in line and call_id in line
                       for line in gw.events("call.state"))
            page.wait_for_selector("#call-facts dd[data-state='ended']")

        metrics = scrape(gw, API_KEY)
        for stage in ("stt", "llm_first_token", "tts_first_audio", "voice_to_voice"):
            assert value(metrics, "callgate_turn_stage_seconds_count", stage=stage) >= 1, stage

        # History lists the call with its recording, which plays for the call's length.
        page.goto(f"{gw.http}/console#/history")
        page.wait_for_selector(f"#history-calls tr[data-call-id='{call_id}'] td:has-text('●')")
        page.click(f"#history-calls tr[data-call-id='{call_id}']")
        page.wait_for_selector("#recording:not([hidden])")
        poll(page, "document.getElementById('player').duration > 0")
        played = page.evaluate("document.getElementById('player').duration")
        answered, ended = page.evaluate(
            f"""fetch('/v1/realtime/calls/{call_id}', {{headers: {{Authorization:
                'Bearer ' + sessionStorage.getItem('callgate-api-key')}}}})
               .then(r => r.json()).then(c => [c.answered_at, c.ended_at])""")
        print(f"recording plays {played:.2f} s; the call lasted {ended - answered:.2f} s")
        assert abs(played - (ended - answered)) < 0.6
        started = page.evaluate("document.getElementById('player').play()"
                                ".then(() => 'playing', e => `${e.name}: ${e.message}`)")
        assert started == "playing", started
        poll(page, "document.getElementById('player').currentTime > 0.2")


def poll(page: Any, expression: str, timeout: float = WAIT_MS / 1000) -> None:
    """Wait until ``expression`` is true in the page (Playwright's wait_for_function compiles
    its predicate with eval, which the console's Content-Security-Policy forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.1)
