import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from speechrs.cli.main import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.reference
def test_transcribe_prints_exactly_what_transformers_decodes(native_dir, hf_dir, clip):
    from reference import hf_greedy, hf_processor

    processor = hf_processor(hf_dir / "tekken.json")
    inputs = processor.apply_transcription_request(language=None, audio=str(clip), model_id="x")
    ref_ids, _ = hf_greedy(hf_dir, inputs, 32)
    expected = processor.batch_decode([ref_ids], skip_special_tokens=True)[0]
    result = invoke("transcribe", clip, "-m", native_dir, "--temperature", "0", "--max-tokens", "32")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert "tok/s" in result.stderr and "native layout" in result.stderr


def test_json_format_reports_usage(hf_dir, clip):
    result = invoke("transcribe", clip, "-m", hf_dir, "--language", "en", "--max-tokens", "6", "--format", "json", "-q")
    assert result.exit_code == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 6
    assert body["usage"]["prompt_tokens"] == 383 and result.stderr == ""


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"not audio at all", "cannot decode")])
def test_bad_audio_is_one_line_and_exit_1(native_dir, tmp_path, content, match):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(content)
    result = invoke("transcribe", bad, "-m", native_dir, "-q")
    assert result.exit_code == 1 and match in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_audio_and_missing_model(native_dir, tmp_path, clip):
    result = invoke("transcribe", tmp_path / "nope.wav", "-m", native_dir)
    assert result.exit_code == 1 and "audio file not found" in result.stderr
    result = invoke("transcribe", clip, "-m", tmp_path / "no-model-here", "-q")
    assert result.exit_code == 1 and "neither a directory nor a hub id" in result.stderr


def test_bad_options_are_refused(native_dir, clip):
    result = invoke("transcribe", clip, "-m", native_dir, "--top-p", "0", "-q")
    assert result.exit_code == 1 and "top_p" in result.stderr
    result = invoke("transcribe", clip, "-m", native_dir, "--dtype", "int3", "-q")
    assert result.exit_code == 2


def _fake_hub_cache(home: Path, repo: str, files: list[Path]) -> None:
    """The on-disk layout huggingface_hub's cache uses: refs/main -> snapshots/<sha>/<files>."""
    sha = "0" * 40
    root = home / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(sha)
    snap = root / "snapshots" / sha
    snap.mkdir(parents=True)
    for f in files:
        os.link(f, snap / f.name) if f.stat().st_dev == snap.stat().st_dev else shutil.copy(f, snap / f.name)


def _run_cli(args, env_extra):
    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "speechrs", *map(str, args)], capture_output=True, text=True, env=env, timeout=300
    )


def test_hub_id_resolves_offline_from_the_hf_cache_and_prefers_native(native_dir, hf_dir, tmp_path, clip):
    home = tmp_path / "hf-home"
    files = list(native_dir.iterdir()) + [p for p in hf_dir.iterdir() if p.name != "tekken.json"]
    _fake_hub_cache(home, "mistralai/Voxtral-Mini-3B-2507", files)
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = _run_cli(["transcribe", clip, "--max-tokens", "4"], env)  # default model id
    assert result.returncode == 0, result.stderr
    assert "native layout" in result.stderr and result.stdout.strip()

    result = _run_cli(["transcribe", clip, "-m", "someone/not-cached", "-q"], env)
    assert result.returncode == 1 and "not in the local Hugging Face cache" in result.stderr
    assert "Traceback" not in result.stderr


SPEAK = "[S1] Hello there. [S2] Hi! (laughs)"


def test_speak_writes_a_44k_mono_16bit_wav(dia_dirs, dac_dirs, tmp_path):
    import soundfile as sf

    out = tmp_path / "out.wav"
    result = invoke(
        "speak", SPEAK, "-m", dia_dirs[0], "--dac", dac_dirs[0], "-o", out, "--max-tokens", "48", "--seed", "1"
    )
    assert result.exit_code == 0, result.stderr
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    assert info.frames % 512 == 0 and 0 < info.frames <= (48 - 16) * 512  # fewer frames if EOS comes early
    assert "real time" in result.stderr and result.stdout == ""


def test_speak_pcm_from_stdin_and_file(dia_dirs, dac_dirs, tmp_path):
    out = tmp_path / "out.pcm"
    result = runner.invoke(
        app,
        [
            "speak",
            "-m",
            str(dia_dirs[1]),
            "--dac",
            str(dac_dirs[1]),
            "-o",
            str(out),
            "--max-tokens",
            "20",
            "--format",
            "pcm",
            "-q",
            "--seed",
            "2",
        ],
        input=SPEAK,
    )
    assert result.exit_code == 0, result.stderr
    assert out.stat().st_size % (512 * 2) == 0 and 0 < out.stat().st_size <= (20 - 16) * 512 * 2
    text = tmp_path / "script.txt"
    text.write_text(SPEAK)
    again = tmp_path / "again.pcm"
    result = invoke(
        "speak",
        "--file",
        text,
        "-m",
        dia_dirs[1],
        "--dac",
        dac_dirs[1],
        "-o",
        again,
        "--max-tokens",
        "20",
        "--format",
        "pcm",
        "-q",
        "--seed",
        "2",
    )
    assert result.exit_code == 0 and again.read_bytes() == out.read_bytes()


def test_speak_stream_writes_the_streamed_audio_to_a_file_and_to_stdout(dia_dirs, dac_dirs, tmp_path):
    import numpy as np
    import soundfile as sf

    import speechrs
    from speechrs.audio.decode import to_s16le
    from speechrs.dia.pipeline import AudioChunk

    events = speechrs.load(str(dia_dirs[0]), dac=str(dac_dirs[0])).speak_stream(
        SPEAK, stream_audio=True, temperature=0, max_tokens=60
    )
    expected = to_s16le(np.concatenate([e.pcm for e in events if isinstance(e, AudioChunk)]))
    out = tmp_path / "s.wav"
    common = ["-m", dia_dirs[0], "--dac", dac_dirs[0], "--max-tokens", "60", "--temperature", "0", "--stream", "-q"]
    result = invoke("speak", SPEAK, "-o", out, *common)
    assert result.exit_code == 0, result.stderr
    data, rate = sf.read(str(out), dtype="int16")  # the header's sizes were written once the clip ended
    assert rate == 44100 and data.tobytes() == expected
    # in this process: two processes' float32 matmuls may round differently (MKL picks kernels by alignment),
    # and a greedy near-tie would then change the codes
    result = invoke("speak", SPEAK, "-o", "-", "--format", "pcm", *common)
    assert result.exit_code == 0 and result.stdout_bytes == expected, (len(result.stdout_bytes), len(expected))
    result = invoke("speak", SPEAK, "-o", tmp_path / "n.wav", "--normalize", *common)
    assert result.exit_code == 1 and "cannot be loudness-normalised" in result.stderr
    assert not (tmp_path / "n.wav").exists()


def test_speak_clones_a_reference_voice(dia_dirs, dac_dirs, clip, tmp_path):
    import soundfile as sf

    import speechrs
    from speechrs.audio.decode import to_s16le

    wav, ref = tmp_path / "ref.wav", "[S1] A reference voice."
    pcm, rate = sf.read(str(clip), dtype="float32")
    sf.write(str(wav), pcm[: int(1.5 * rate)], rate)
    expected = speechrs.load(str(dia_dirs[1]), dac=str(dac_dirs[1])).speak(
        SPEAK, ref_audio=str(wav), ref_text=ref, temperature=0, max_tokens=40, normalize=False
    )
    out = tmp_path / "clone.pcm"
    common = ["-m", dia_dirs[1], "--dac", dac_dirs[1], "--max-tokens", "40", "--temperature", "0", "-q"]
    result = invoke(
        "speak", SPEAK, "--ref-audio", wav, "--ref-text", ref, "--no-normalize", "--format", "pcm", "-o", out, *common
    )
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == to_s16le(expected.pcm) and len(expected.pcm) > 0
    result = invoke("speak", SPEAK, "--ref-audio", wav, "-o", tmp_path / "x.wav", *common)
    assert result.exit_code == 1 and "takes both ref_audio and ref_text" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("case", ["empty", "too_long", "unknown_config", "missing_dac", "voxtral_model"])
def test_speak_errors_are_one_line(case, dia_dirs, dac_dirs, native_dir, tmp_path):
    text, model, dac = SPEAK, dia_dirs[0], dac_dirs[0]
    if case == "empty":
        text, match = " ", "text is empty"
    elif case == "too_long":
        text, match = "[S1] " + "la" * 400, "does not fit in one piece"  # long scripts split, but not in a word
    elif case == "unknown_config":
        model = tmp_path / "odd"
        model.mkdir()
        (model / "config.json").write_text(json.dumps({"model_type": "mystery", "hidden": 3}))
        match = "unknown architecture"
    elif case == "missing_dac":
        dac, match = tmp_path / "no-dac", "neither a directory nor a hub id"
    else:
        model, match = native_dir, "is a Voxtral model, not Dia"
    result = invoke("speak", text, "-m", model, "--dac", dac, "-o", tmp_path / "x.wav", "-q")
    assert result.exit_code == 1 and match in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.wav").exists()


def test_speak_default_model_and_dac_resolve_offline_from_the_hf_cache(dia_dirs, dac_dirs, tmp_path):
    home = tmp_path / "hf-home"
    _fake_hub_cache(home, "nari-labs/Dia-1.6B", list(dia_dirs[0].iterdir()))
    env = {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "x.wav"
    result = _run_cli(["speak", SPEAK, "-o", out, "--max-tokens", "20"], env)
    assert result.returncode == 1 and "EricB/dac_44khz is not in the local Hugging Face cache" in result.stderr
    _fake_hub_cache(home, "EricB/dac_44khz", list(dac_dirs[0].iterdir()))
    result = _run_cli(["speak", SPEAK, "-o", out, "--max-tokens", "20", "--seed", "0"], env)
    assert result.returncode == 0, result.stderr
    assert "nari_v01 layout" in result.stderr and out.stat().st_size > 44


@pytest.mark.parametrize("device,match", [("cuda:7", "CUDA"), ("tpu9", "unknown device")])
def test_bad_device_is_one_line(native_dir, clip, device, match):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has that device")
    result = invoke("transcribe", clip, "-m", native_dir, "--device", device, "-q")
    assert result.exit_code == 1 and match in result.stderr and "Traceback" not in result.stderr


def test_help_shows_the_defaults_that_depend_on_the_checkpoint():
    result = runner.invoke(app, ["speak", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for shown in ("[default: 1.3 v0.1, 1.8 0626]", "[default: the generation's]", "[default: on, off with --stream]"):
        assert shown in result.stdout  # rich markup would eat an unescaped [default: ...]


def test_quantize_is_said_at_load_and_runs(native_dir, dia_dirs, dac_dirs, clip, tmp_path):
    result = invoke("transcribe", clip, "-m", native_dir, "--quantize", "int8", "--max-tokens", "4")
    assert result.exit_code == 0, result.stderr
    assert "int8 weight-only" in result.stderr and "cpu (auto):" in result.stderr
    out = tmp_path / "q.wav"
    result = invoke("speak", "[S1] Hi.", "-m", dia_dirs[0], "--dac", dac_dirs[0], "--quantize", "int4", "-o", out)
    assert result.exit_code == 0 and out.stat().st_size > 44, result.stderr
    result = invoke("transcribe", clip, "-m", native_dir, "--quantize", "int3")
    assert result.exit_code == 2 and "int3" in result.stderr


def test_serve_takes_one_quantize_or_one_per_model(native_dir, dia_dirs):
    result = invoke(
        "serve", "-m", native_dir, "-m", dia_dirs[0], "--quantize", "int8", "--quantize", "none", "--quantize", "int4"
    )
    assert result.exit_code == 2 and "3 times for 2 models" in result.stderr


def test_device_auto_is_the_default_and_the_load_line_says_what_it_chose(native_dir, clip):
    import torch

    from speechrs.engine.engine import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") in (expected, "mps")
    result = invoke("transcribe", clip, "-m", native_dir, "--max-tokens", "2")
    assert result.exit_code == 0 and f"{resolve_device('auto')} (auto):" in result.stderr, result.stderr


def test_an_unreachable_hub_gives_the_one_line_error_at_once(clip, tmp_path):
    """No network and nothing cached: the clear error in a second or two, not ~50 s of hub retry warnings."""
    import time

    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")  # the discard port: refused
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "speechrs", "transcribe", str(clip), "-q"], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 1 and time.perf_counter() - t0 < 30
    assert proc.stderr.count("\n") == 1 and "not in the local Hugging Face cache" in proc.stderr, proc.stderr


def test_transcribe_writes_subtitles_and_verbose_json(native_dir, paused_speech, tmp_path):
    import srt

    import speechrs

    path, truth, duration = paused_speech
    expected = speechrs.load(str(native_dir)).transcribe(str(path), timestamps=True, max_tokens=4)
    out = tmp_path / "talk.srt"
    result = invoke("transcribe", path, "-m", native_dir, "--max-tokens", "4", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert out.read_text() == expected.srt() and len(list(srt.parse(out.read_text()))) == 2
    assert f"wrote {out} (srt)" in result.stderr and "in 2 segments" in result.stderr and result.stdout == ""
    result = invoke("transcribe", path, "-m", native_dir, "--max-tokens", "4", "--format", "vtt", "-q")
    assert result.exit_code == 0 and result.stdout == expected.vtt()
    result = invoke("transcribe", path, "-m", native_dir, "--max-tokens", "4", "--format", "verbose_json", "-q")
    body = json.loads(result.stdout)
    assert body["text"] == expected.text and body["duration"] == pytest.approx(duration, abs=1e-3)
    assert [s["end"] for s in body["segments"]] == [round(s.end, 3) for s in expected.segments]
    result = invoke("transcribe", path, "-m", native_dir, "--translate-to", "fr", "--max-tokens", "4", "-q")
    assert (
        result.exit_code == 0
        and result.stdout.strip()
        == speechrs.load(str(native_dir)).translate(str(path), "fr", max_tokens=4).text.strip()
    )


@pytest.mark.parametrize(
    "args, match",
    [
        (["-o", "x.doc"], "cannot tell the format from 'x.doc'"),
        (["--translate-to", "klingon"], "unknown target language 'klingon'"),
        (["--format", "srt", "--max-segment-seconds", "90"], "max_segment_s must be in"),
    ],
)
def test_transcript_option_errors_are_one_line(native_dir, clip, tmp_path, args, match):
    result = invoke("transcribe", clip, "-m", native_dir, *[a if a != "x.doc" else tmp_path / a for a in args])
    assert result.exit_code == 1 and match in result.stderr and len(result.stderr.strip().splitlines()) <= 2


SPEAK_TEXT = "[S1] Hello there."


@pytest.mark.parametrize(
    "command, match",
    [
        (["speak", SPEAK_TEXT, "-o", "x.xyz"], "cannot tell the audio format from 'x.xyz'"),
        (["speak", "[S1] [S2]", "-o", "x.wav"], "text has only speaker tags"),
        (["speak", "  ", "-o", "x.wav"], "text is empty"),
        (["speak", SPEAK_TEXT, "--speed", "9", "-o", "x.wav"], "speed must be in [0.25, 4.0]"),
        (["speak", SPEAK_TEXT, "--top-p", "0", "-o", "x.wav"], "top_p must be in (0, 1]"),
        (["speak", SPEAK_TEXT, "--voice", "nosuch", "-o", "x.wav"], "no voice named 'nosuch'"),
        (["speak", SPEAK_TEXT, "--ref-audio", "NOTAUDIO", "--ref-text", "[S1] x", "-o", "x.wav"], "cannot decode"),
        (["speak", SPEAK_TEXT, "--format", "mp3", "--stream", "-o", "x.mp3"], "--stream writes wav or pcm"),
        (["speak", SPEAK_TEXT, "-m", "VOXTRAL", "-o", "x.wav"], "is a Voxtral model, not Dia"),
        (["transcribe", "NOTAUDIO", "-m", "VOXTRAL"], "cannot decode"),
        (["transcribe", "CLIP", "-m", "DIA"], "is a Dia model, not Voxtral"),
        (["transcribe", "CLIP", "-m", "VOXTRAL", "--temperature", "20"], "temperature must be in [0, 10]"),
    ],
)
def test_mistakes_are_said_before_the_model_loads(command, match, native_dir, dia_dirs, clip, tmp_path, monkeypatch):
    """Each is one line and exit 1, and no model is loaded for it (a real one takes tens of seconds)."""
    import speechrs.cli.main as cli_app

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was found")

    monkeypatch.setattr(cli_app, "_load", no_load)
    monkeypatch.setenv("SPEECHRS_VOICES_DIR", str(tmp_path / "voices"))
    (tmp_path / "notes.txt").write_text("not audio at all")
    names = {"NOTAUDIO": tmp_path / "notes.txt", "VOXTRAL": native_dir, "DIA": dia_dirs[0], "CLIP": clip}
    args = [names.get(a, tmp_path / a if a.startswith("x.") else a) for a in command]
    if command[0] == "speak" and "-m" not in command:
        args += ["-m", dia_dirs[0]]
    result = invoke(*args)
    assert result.exit_code == 1 and match in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not any(tmp_path.glob("x.*"))


def test_speak_at_a_terminal_with_no_text_says_so(dia_dirs, monkeypatch):
    class Terminal:
        def isatty(self):
            return True

        def read(self):
            raise AssertionError("read a terminal")

    import speechrs.cli.main as cli_app

    monkeypatch.setattr(cli_app.sys, "stdin", Terminal())
    with pytest.raises(typer.Exit) as exit_info:
        cli_app._script_text("-", None)
    assert exit_info.value.exit_code == 1


@pytest.mark.parametrize(
    "command", [["transcribe"], ["speak"], ["serve"], ["quantize"], ["voices", "add"], ["voices", "list"], []]
)
def test_the_helps_read_at_80_columns(command):
    """No option name cut, flags without a type, values named, defaults stated, arguments as the text names them."""
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"}, color=False)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "…" not in text and "<bool>" not in text and "<str>" not in text.split("Options")[-1]
    assert max(len(line) for line in text.splitlines()) <= 80
    if command == ["voices", "add"]:
        assert "NAME CLIP" in text.splitlines()[1]
    if command == ["serve"]:
        for panel in ("Models and compute", "Network, security and logs", "Limits", "Media and voices"):
            assert panel in text
        words = " ".join(text.translate(str.maketrans("│╭╮╰╯─", "      ")).split())
        assert "[default: 4 on a CPU, 8 on MPS, 16 on CUDA]" in words


def test_served_names_default_to_the_directory_and_keep_the_path_as_an_alias(native_dir):
    from speechrs.engine.engine import Engine, Loaded, served_name
    from speechrs.errors import InvalidRequestError
    from speechrs.hub import detect
    from speechrs.server.app import check_served_names

    assert served_name(str(native_dir)) == native_dir.name and served_name("org/model") == "org/model"
    with pytest.raises(InvalidRequestError, match="another model's"):
        check_served_names(["a/x", "b/x"], ["x", "x"])
    with pytest.raises(InvalidRequestError, match="keeps for a family's first model"):
        check_served_names(["a"], ["whisper-1"])
    loaded = Loaded("mine", detect(native_dir), None, None, aliases=(str(native_dir),))  # type: ignore[arg-type]
    engine = Engine.__new__(Engine)
    engine.models = [loaded]
    assert engine.get("mine", "voxtral", "/r") is engine.get(str(native_dir), "voxtral", "/r") is loaded
    assert engine.get("gpt-4o-transcribe", "voxtral", "/r") is loaded


def test_speed_prepares_the_time_stretch_before_the_model_loads(dia_dirs, tmp_path, monkeypatch):
    """librosa's first use (its kernels compile) happens under a status line before the load, not unannounced
    after the generation."""
    import speechrs.cli.main as cli_app
    from speechrs.dia import tempo
    from speechrs.errors import InvalidRequestError

    calls = []
    monkeypatch.setattr(tempo, "warm_up", lambda: calls.append("warm_up"))

    def load(*args, **kwargs):
        calls.append("load")
        raise InvalidRequestError("stopped here")

    monkeypatch.setattr(cli_app, "_load", load)
    result = invoke("speak", SPEAK_TEXT, "-m", dia_dirs[0], "--speed", "1.5", "-o", tmp_path / "x.wav")
    assert result.exit_code == 1 and "stopped here" in result.stderr and calls == ["warm_up", "load"]
    tempo.stretch(tempo.np.zeros(10, tempo.np.float32), 1.0)  # speed 1 never stretches
