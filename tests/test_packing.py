"""oneDNN-packed decode weights (speechrs/linear/packing.py) give torch's Linear's numbers: bit for bit in bf16 (a lone
row as torch computes it among others), and the same bits for a row alone as among other rows."""

import pytest
import torch

from speechrs.dia.checkpoint import load_dia
from speechrs.dia.pipeline import DiaPipeline, SpeakOptions, encode_text
from speechrs.linear.packing import PackedLinear, packable
from speechrs.voxtral.checkpoint import load_voxtral
from speechrs.voxtral.events import GenerationOptions
from speechrs.voxtral.pipeline import VoxtralPipeline
from speechrs.voxtral.tekken import Tekken

bf16 = torch.bfloat16
needs_packing = pytest.mark.skipif(
    not packable(torch.zeros(1, dtype=bf16)), reason="this CPU's oneDNN has no bf16 (or SPEECHRS_PACK_WEIGHTS=0)"
)


@needs_packing
@pytest.mark.parametrize("shape", [(2, 3072), (7, 3072), (2, 1, 3072), (2, 40, 3072)])
def test_packed_linear_equals_linear_bit_for_bit_from_two_rows(shape):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1024, 3072, generator=g).to(bf16)
    x = torch.randn(*shape, generator=g).to(bf16)
    assert torch.equal(PackedLinear(w)(x), torch.nn.functional.linear(x, w))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
@pytest.mark.parametrize("dtype", [torch.float32, bf16])
def test_a_lone_row_gets_the_bits_it_gets_among_other_rows(dtype):
    """oneDNN's fp32 kernel sums a single row in another order than rows among others (and so does its bf16 kernel
    without AMX): PackedLinear computes a lone row as the first of two, so a request decoded alone equals the
    same request batched (continuous batching) and, in bf16, torch's Linear bit for bit."""
    if not packable(torch.zeros(1, dtype=dtype)):
        pytest.skip("this CPU's oneDNN has no bf16 (or SPEECHRS_PACK_WEIGHTS=0)")
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(4096, 3072, generator=g).to(dtype), torch.randn(16, 3072, generator=g).to(dtype)
    packed = PackedLinear(w)
    for shape in [(1, 3072), (1, 1, 3072)]:
        alone = packed(x[:1].reshape(shape))
        assert alone.shape == (*shape[:-1], 4096)
        for rows in (2, 3, 8, 16):
            assert torch.equal(packed(x[:rows])[:1], alone.reshape(1, 4096))
    if dtype == bf16:
        assert torch.equal(packed(x[:1]), torch.nn.functional.linear(x[:2], w)[:1])


def test_float32_is_packed_on_any_cpu_and_the_switch_turns_packing_off(monkeypatch):
    assert packable(torch.zeros(1)) == torch.backends.mkldnn.is_available()  # the reference-parity tests run there
    assert not packable(torch.zeros(1, dtype=torch.float16))
    monkeypatch.setenv("SPEECHRS_PACK_WEIGHTS", "0")
    assert not packable(torch.zeros(1)) and not packable(torch.zeros(1, dtype=bf16))


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch")
@pytest.mark.parametrize("rows", [1, 2, 8, 40])
def test_packed_float32_linear_is_torch_linear_to_float_rounding(rows):
    g = torch.Generator().manual_seed(rows)
    w, x = torch.randn(1024, 3072, generator=g), torch.randn(rows, 3072, generator=g)
    torch.testing.assert_close(PackedLinear(w)(x), torch.nn.functional.linear(x, w), rtol=1e-4, atol=1e-3)


def _unpacked(monkeypatch, load):
    monkeypatch.setenv("SPEECHRS_PACK_WEIGHTS", "0")
    model = load()
    monkeypatch.delenv("SPEECHRS_PACK_WEIGHTS")
    return model


@needs_packing
def test_packed_dia_generates_the_same_codes(dia_dirs, dac, monkeypatch):
    load = lambda: load_dia(dia_dirs[1], bf16)  # noqa: E731
    plain, packed = _unpacked(monkeypatch, load), load()
    assert isinstance(packed.decoder.layers[0].mlp.gate_up_proj, PackedLinear)
    assert not hasattr(packed.decoder.layers[0].self_attention, "q_proj")  # the plain copy is gone
    ids, opts = encode_text("[S1] Hello there. [S2] Hi!", plain.cfg), SpeakOptions(max_tokens=40, temperature=0)
    rows = [
        list(DiaPipeline(m, dac).generate_codes(ids, DiaPipeline(m, dac).options(opts)))[-1] for m in (plain, packed)
    ]
    assert torch.equal(rows[0], rows[1])


@needs_packing
def test_packed_voxtral_gives_the_same_logits_and_text(native_dir, clip, monkeypatch):
    load = lambda: load_voxtral(native_dir, "native", bf16)  # noqa: E731
    plain, packed = _unpacked(monkeypatch, load), load()
    assert isinstance(packed.output, PackedLinear) and not hasattr(packed.layers[0].attention, "wq")
    ids = torch.tensor([[1, 3, 1500, 2000, 2500, 3000, 4, 7000]])
    with torch.inference_mode():
        logits = []
        for m in (plain, packed):
            m.setup_caches(1, 16)
            logits.append(m(m.embed(ids, None, 24), 0, last_only=False))
    assert torch.equal(logits[0], logits[1])
    texts = [
        list(
            VoxtralPipeline(m, Tekken(native_dir / "tekken.json")).transcribe(
                str(clip), "en", GenerationOptions(max_tokens=12)
            )
        )[-1].text
        for m in (plain, packed)
    ]
    assert texts[0] == texts[1]
