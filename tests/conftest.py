import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS.parent / "benchmarks"))  # quality.py: the teacher-forced comparison the tests share

import tiny  # noqa: E402

# named voices of the tests live in a directory of their own, never in the user's ~/.local/share/speechrs/voices
os.environ["SPEECHRS_VOICES_DIR"] = tempfile.mkdtemp(prefix="speechrs-test-voices-")
from speech import SENTENCES, EspeakMissing, speech_with_pauses  # noqa: E402,F401  (tests import them from here)

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
    from speechrs.dia.checkpoint import load_dia
    from speechrs.dia.pipeline import DiaPipeline
    from speechrs.engine.engine import Engine, Loaded
    from speechrs.hub import detect
    from speechrs.linear.compute import plan

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

    from speechrs.server.app import make_app
    from speechrs.server.media import MediaPolicy

    s = Server(make_app(engine, MediaPolicy(allow_local_files=True), max_upload_bytes=2 * 2**20))
    yield s
    s.close()


# ---- real speech with known pauses: espeak-ng sentences joined by silences (speech.py) ----


@pytest.fixture(scope="session")
def paused_speech(tmp_path_factory):
    """(wav path, speech intervals, duration): three sentences, three times, 2 s pauses; about 46 s."""
    import soundfile as sf

    d = tmp_path_factory.mktemp("speech")
    try:
        pcm, truth = speech_with_pauses(d, repeats=3)
    except EspeakMissing as e:
        pytest.skip(str(e))
    sf.write(d / "paused.wav", pcm, 22050)
    return d / "paused.wav", truth, len(pcm) / 22050


@pytest.fixture(autouse=True)
def _fresh_cpu_answers():
    """What the CPU computes fast is cached per process; a test that forces an answer (SPEECHRS_NATIVE_BF16,
    SPEECHRS_AMX, SPEECHRS_CPU_KERNELS) must not leave it cached for the next. Torn down after monkeypatch has
    restored the environment."""
    yield
    from speechrs.kernels import bf16_step_kernels, cpu

    for cached in (cpu.cpu_native_bf16, cpu.cpu_amx, bf16_step_kernels):
        cached.cache_clear()
