"""The page at / in a real browser: Debian's headless chromium driven by Playwright against the server on the tiny
checkpoints. It types, clicks and uploads as a user would, and checks what the page shows and keeps against the
Python API on the same models. Screenshots go to $SPEECHRS_SCREENSHOTS (a directory) when it is set."""

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import speechrs
from speechrs.audio.decode import to_s16le
from speechrs.dia.pipeline import AudioChunk

SPEAK = "[S1] Hello there. [S2] Hi! (laughs)"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (make test installs Debian's chromium with apt where it can)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a test extra: pip install -e '.[test]'")
    with sync_api.sync_playwright() as p:
        # a fake microphone (a tone) that needs no permission prompt, for the Record button
        fake_mic = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", *fake_mic])
        yield b
        b.close()


@pytest.fixture()
def page(browser, server):
    context = browser.new_context(viewport={"width": 900, "height": 1100}, permissions=["microphone"])
    page = context.new_page()
    failed: list[str] = []
    page.on("requestfailed", lambda r: failed.append(r.url))
    page.on("request", lambda r: failed.append(r.url) if not r.url.startswith((server.url, "blob:", "data:")) else None)
    page.goto(server.url + "/")
    yield page
    context.close()
    assert not failed, f"the page reached beyond the server or failed a request: {failed}"


def screenshot(page, name: str, tmp_path: Path) -> None:
    """Into $SPEECHRS_SCREENSHOTS if set (to look at), else the test's temporary directory; a real PNG either way."""
    path = Path(os.environ.get("SPEECHRS_SCREENSHOTS") or tmp_path) / name
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def audio_bytes(page) -> bytes:
    data = page.evaluate(
        """async () => {
            const buffer = await (await fetch(document.getElementById('speech-audio').src)).arrayBuffer();
            return Array.from(new Uint8Array(buffer));
        }"""
    )
    return bytes(data)


def test_speak_streams_then_keeps_a_playable_wav(page, dia_dirs, dac_dirs, tmp_path):
    page.wait_for_selector("#speak:not([hidden])")
    assert "tiny-dia (dia)" in page.inner_text("#models")
    page.fill("#speak-text", SPEAK)
    page.fill("#seed", "3")
    page.fill("#max-tokens", "60")
    page.click("#speak-button")
    # selectors, not wait_for_function: the page's CSP forbids the eval that Playwright's predicates use
    page.wait_for_selector("#speech-audio[src^='blob:']", timeout=120_000)
    duration = page.evaluate(
        """() => new Promise((done) => {
            const a = document.getElementById('speech-audio');
            if (a.readyState >= 1) done(a.duration); else a.onloadedmetadata = () => done(a.duration);
        })"""
    )
    tts = speechrs.load(str(dia_dirs[0]), dac=str(dac_dirs[0]))
    streamed = np.concatenate(
        [e.pcm for e in tts.speak_stream(SPEAK, stream_audio=True, seed=3, max_tokens=60) if isinstance(e, AudioChunk)]
    )
    wav = audio_bytes(page)
    pcm, rate = sf.read(io.BytesIO(wav), dtype="int16")
    assert rate == 44100 and pcm.tobytes() == to_s16le(streamed)  # the very samples the server streamed
    assert duration == pytest.approx(len(streamed) / 44100, abs=1e-3)
    assert not page.is_hidden("#speech-download") and "x real time" in page.inner_text("#figures")
    assert page.is_hidden("#error")
    screenshot(page, "speak.png", tmp_path)


def test_transcribe_an_upload_streams_text_and_segments(page, native_dir, clip, tmp_path):
    page.wait_for_selector("#transcribe:not([hidden])")
    page.set_input_files("#audio-file", str(clip))
    page.select_option("#language", "en")
    page.click("#transcribe-button")
    page.wait_for_selector("#transcribe-status:has-text('segment')", timeout=120_000)
    expected = speechrs.load(str(native_dir)).transcribe(str(clip), "en", timestamps=True)
    items = page.query_selector_all("#segments li")
    assert len(items) == len(expected.segments) >= 1
    assert page.inner_text("#transcript") == ""  # the text is shown once: as its segments

    def words(text: str) -> str:
        return " ".join(text.split())

    shown = [words(i.inner_text().split("–", 1)[1].split(" s", 1)[1]) for i in items]  # after "0.00–2.50 s"
    assert shown == [words(s.text) for s in expected.segments]
    assert items[0].inner_text().startswith(f"{expected.segments[0].start:.2f}–{expected.segments[0].end:.2f} s")
    assert not page.is_hidden("#srt-download") and "tok/s" in page.inner_text("#figures")
    screenshot(page, "transcribe.png", tmp_path)


def test_record_from_the_microphone_then_transcribe(page):
    """Chromium's fake microphone: MediaRecorder's webm is decoded by the page and sent as a WAV the server reads."""
    page.wait_for_selector("#transcribe:not([hidden])")
    page.click("#record-button")
    page.wait_for_selector("#record-button.recording, #error:not([hidden])")
    assert page.is_hidden("#error"), page.inner_text("#error")
    page.wait_for_timeout(1500)
    page.click("#record-button")
    page.wait_for_selector("#transcribe-status:has-text('recorded')", timeout=30_000)
    seconds = float(page.inner_text("#transcribe-status").split()[1])
    assert 1.0 <= seconds <= 3.0
    page.click("#transcribe-button")
    page.wait_for_selector("#transcribe-status:has-text('segment')", timeout=120_000)
    assert page.is_hidden("#error")  # the server decoded the page's WAV (a webm upload would be a 400)


def test_errors_are_shown_as_sentences(page):
    page.wait_for_selector("#speak:not([hidden])")
    page.fill("#cfg-scale", "1000")  # out of range: a 400 from the server
    page.click("#speak-button")
    page.wait_for_selector("#error:not([hidden])")
    message = page.inner_text("#error")
    assert "cfg_scale must be in [1, 100]" in message and "{" not in message  # the error's message, not its JSON
    assert page.inner_text("#speak-status").startswith("failed")  # not left at "generating…"
    assert "whisper-1" not in page.inner_text("#models")  # the served models, not OpenAI's names for them
    page.click("#transcribe-button")  # nothing chosen: said on the page, no request
    page.wait_for_selector("#error:has-text('Choose an audio file')")


def test_api_key_is_asked_for_and_sent(browser, engine):
    from http_server import Server

    from speechrs.server.app import make_app
    from speechrs.server.guard import Security

    server = Server(make_app(engine, security=Security(api_key="sesame")))
    try:
        page = browser.new_page()
        page.goto(server.url + "/")  # the page itself needs no key; the API does
        page.wait_for_selector("#key-form:not([hidden])")
        assert "API key" in page.inner_text("#error")
        page.fill("#api-key", "sesame")
        page.click("#key-form button")
        page.wait_for_selector("#speak:not([hidden])")
        assert "tiny-voxtral" in page.inner_text("#models") and page.is_hidden("#key-form")
        page.close()
    finally:
        server.close()


def test_no_ui_leaves_the_page_out(engine):
    from http_server import Server, request

    from speechrs.server.app import make_app

    server = Server(make_app(engine, ui=False))
    try:
        assert request(server, "GET", "/")[0] == 404
    finally:
        server.close()
    server = Server(make_app(engine))
    try:
        status, headers, body = request(server, "GET", "/")
        assert status == 200 and b"<title>speechrs</title>" in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert request(server, "GET", "/ui/app.js")[0] == 200
        assert request(server, "GET", "/ui/__init__.py")[0] == 404  # only the page's own files
    finally:
        server.close()


def test_a_named_voice_and_a_speed_from_the_page(browser, engine, dia_dirs, dac_dirs, clip, tmp_path):
    """The voice choice appears when the server has named voices; the page's WAV is the streamed audio of that
    voice at that speed, as the Python API makes it."""
    from http_server import Server

    from speechrs.server.app import make_app

    tts = speechrs.load(str(dia_dirs[0]), dac=str(dac_dirs[0]), voices_dir=tmp_path / "voices")
    pcm, rate = sf.read(clip, dtype="float32")
    tts.voices.add("narrator", (pcm[: int(1.5 * rate)], rate), "[S1] What the clip says.")
    server = Server(make_app(engine, voices_dir=tmp_path / "voices"))
    try:
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#voice-label:not([hidden])")
        page.select_option("#voice", "narrator")
        page.fill("#speak-text", "[S1] Now in that voice.")
        page.fill("#seed", "4")
        page.fill("#max-tokens", "40")
        page.fill("#speed", "2")
        page.click("#speak-button")
        page.wait_for_selector("#speech-audio[src^='blob:']", timeout=120_000)
        wav = audio_bytes(page)
        events = tts.speak_stream(
            "[S1] Now in that voice.", stream_audio=True, voice="narrator", seed=4, max_tokens=40, speed=2.0
        )
        streamed = np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)])
        assert sf.read(io.BytesIO(wav), dtype="int16")[0].tobytes() == to_s16le(streamed)
        page.close()
    finally:
        server.close()


def test_the_page_has_an_icon(engine):
    from http_server import Server, request

    from speechrs.server.app import make_app

    server = Server(make_app(engine))
    try:
        for path in ("/favicon.ico", "/ui/favicon.svg"):
            status, headers, body = request(server, "GET", path)
            assert status == 200 and headers["Content-Type"].startswith("image/svg+xml") and body.startswith(b"<svg")
    finally:
        server.close()
