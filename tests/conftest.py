import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "benchmarks"))  # quality.py: the teacher-forced comparison the tests share

import tiny  # noqa: E402

CLIP = TESTS / "data" / "clip_en_16k.wav"


@pytest.fixture(scope="session")
def voxtral_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(native dir, HF dir) of one tiny seeded Voxtral."""
    return tiny.write_voxtral(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def native_dir(voxtral_dirs) -> Path:
    return voxtral_dirs[0]


@pytest.fixture(scope="session")
def hf_dir(voxtral_dirs) -> Path:
    return voxtral_dirs[1]


@pytest.fixture(scope="session")
def native_pipeline(native_dir):
    from speechrs.voxtral.pipeline import VoxtralPipeline

    return VoxtralPipeline.load(native_dir, "native")


@pytest.fixture(scope="session")
def hf_pipeline(hf_dir):
    from speechrs.voxtral.pipeline import VoxtralPipeline

    return VoxtralPipeline.load(hf_dir, "hf")


@pytest.fixture(scope="session")
def clip() -> Path:
    return CLIP


def noise(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="session")
def dia_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(nari v0.1 dir, HF 0626 dir) of one tiny seeded Dia."""
    import tiny_dia

    return tiny_dia.write_dia(tmp_path_factory.mktemp("dia"))


@pytest.fixture(scope="session")
def dac_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """(descript weight_g/weight_v dir, transformers folded dir) of one real-size random DAC."""
    import tiny_dia

    return tiny_dia.write_dac(tmp_path_factory.mktemp("dac"))


@pytest.fixture(scope="session")
def dac(dac_dirs):
    from speechrs.dia.dac import load_dac

    return load_dac(dac_dirs[0])


# ---- a server over both tiny models, one per test module that asks for it ----


@pytest.fixture(scope="module")
def engine(native_dir, native_pipeline, dia_dirs, dac):
    from speechrs.compute import plan
    from speechrs.dia.checkpoint import load_dia
    from speechrs.dia.pipeline import DiaPipeline
    from speechrs.engine import Engine, Loaded
    from speechrs.hub import detect

    dia = DiaPipeline(load_dia(dia_dirs[0], None), dac)
    cpu = plan("cpu")
    return Engine(
        [
            Loaded("tiny-voxtral", detect(native_dir), native_pipeline, cpu),
            Loaded("tiny-dia", detect(dia_dirs[0]), dia, cpu),
        ]
    )


@pytest.fixture(scope="module")
def server(engine):
    from http_server import Server

    from speechrs.media import MediaPolicy
    from speechrs.server import make_app

    s = Server(make_app(engine, MediaPolicy(allow_local_files=True), max_upload_bytes=2 * 2**20))
    yield s
    s.close()


# ---- real speech with known pauses: espeak-ng sentences joined by silences ----

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Speech servers should give subtitles with the right times.",
    "A third sentence closes this short test recording.",
]
PAUSE_S = 2.0


def _espeak(text: str, path: Path) -> np.ndarray:
    import shutil
    import subprocess

    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make test installs it with apt where it can)")
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    pcm, rate = sf.read(path, dtype="float32")
    assert rate == 22050
    loud = np.flatnonzero(np.abs(pcm) > 1e-3)
    return pcm[loud[0] : loud[-1] + 1]  # the speech itself, without espeak's own lead-in and tail


def speech_with_pauses(directory: Path, repeats: int = 1, sentences=SENTENCES, pause_s: float = PAUSE_S):
    """-> (22.05 kHz samples, [(start, end)] of each spoken sentence in seconds): 0.5 s of silence, then the
    sentences (repeated) with pause_s of silence after each."""
    rate = 22050
    spoken = [_espeak(s, directory / f"sentence{i}.wav") for i, s in enumerate(sentences)]
    parts, truth, t = [np.zeros(rate // 2, np.float32)], [], rate // 2
    for _ in range(repeats):
        for pcm in spoken:
            parts += [pcm, np.zeros(int(pause_s * rate), np.float32)]
            truth.append((t / rate, (t + len(pcm)) / rate))
            t += len(pcm) + int(pause_s * rate)
    return np.concatenate(parts), truth


@pytest.fixture(scope="session")
def paused_speech(tmp_path_factory):
    """(wav path, speech intervals, duration): three sentences, three times, 2 s pauses; about 46 s."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("speech")
    pcm, truth = speech_with_pauses(d, repeats=3)
    sf.write(d / "paused.wav", pcm, 22050)
    return d / "paused.wav", truth, len(pcm) / 22050
