"""The path of a CPU without native bf16 (upcast.py), taken on any machine with SPEECHRS_NATIVE_BF16=0: bf16
weights stay bf16, and matmuls of many rows and attention run in fp32."""

import pytest
import torch
import torch.nn.functional as F
from quality import compare, voxtral_logits

from speechrs import kernels
from speechrs.kernels.cpu import cpu_native_bf16
from speechrs.linear.packing import PackedLinear
from speechrs.linear.routes import BF16_KERNEL_ROWS, UPCAST_ROWS
from speechrs.linear.upcast import UpcastConv1d, UpcastLinear
from speechrs.voxtral.checkpoint import load_voxtral
from speechrs.voxtral.tekken import transcription_prompt


@pytest.fixture
def no_native_bf16(monkeypatch):
    monkeypatch.setenv("SPEECHRS_NATIVE_BF16", "0")
    cpu_native_bf16.cache_clear()
    # the cached answer is cleared after the test, once the environment is restored (conftest)


@pytest.fixture(params=["speechrs", "torch"])
def decode_kernel(request, monkeypatch) -> str:
    """Layers made in the test read decode rows through speechrs's AVX2 bf16 kernel or torch's bf16 Linear, on
    any machine that can run each (skipped, with the reason, where speechrs's cannot be built)."""
    monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "1" if request.param == "speechrs" else "0")
    if request.param == "speechrs" and not kernels.available():
        pytest.skip(f"speechrs's kernels cannot run here: {kernels.why_not()}")
    return request.param


def test_many_rows_multiply_in_float32_and_few_in_bf16(decode_kernel):
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(64, 96, dtype=torch.bfloat16)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(96, 64, generator=g))
        linear.bias.copy_(torch.randn(96, generator=g))
    up = UpcastLinear(linear)
    x = torch.randn(BF16_KERNEL_ROWS if up.kernel else UPCAST_ROWS, 64, generator=g).to(torch.bfloat16)
    exact = F.linear(x.float(), linear.weight.float(), linear.bias.float()).to(torch.bfloat16)
    assert torch.equal(up(x), exact)
    assert up.kernel == (decode_kernel == "speechrs")
    if decode_kernel == "torch":
        assert torch.equal(up(x[:2]), F.linear(x[:2], linear.weight, linear.bias))
    else:  # fp32 sums rounded to bf16, then the bias added in bf16: two roundings, each of half an ulp of its sum
        product = F.linear(x[:2].double(), linear.weight.double())
        exact = product + linear.bias.double()
        bound = 2.0**-8 * (product.abs() + exact.abs()) + 1e-6
        assert bool(((up(x[:2]).double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("stride", [1, 2])
def test_a_conv_computes_in_float32_and_rounds_once(stride):
    """The encoder's convolutions: the bf16 conv's numbers computed in fp32 (torch's bf16 Conv1d without native
    bf16 takes its slow reference path), rounded to bf16 once."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv1d(16, 24, kernel_size=3, stride=stride, padding=1, dtype=torch.bfloat16)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(24, 16, 3, generator=g))
        conv.bias.copy_(torch.randn(24, generator=g))
    x = torch.randn(2, 16, 50, generator=g).to(torch.bfloat16)
    up = UpcastConv1d(conv)
    exact = F.conv1d(x.double(), conv.weight.double(), conv.bias.double(), stride, 1)
    y = up(x)
    assert y.dtype == torch.bfloat16 and y.shape == exact.shape
    assert bool(((y.double() - exact).abs() <= 2.0**-8 * exact.abs() + 1e-5).all())  # half an ulp, and fp32 sums
    assert torch.equal(y, F.conv1d(x.float(), conv.weight.float(), conv.bias.float(), stride, 1).to(torch.bfloat16))


def test_bf16_voxtral_without_native_bf16_upcasts_and_keeps_its_results(
    no_native_bf16, decode_kernel, native_dir, native_pipeline, clip
):
    import speechrs

    model = load_voxtral(native_dir, "native", torch.bfloat16)
    kinds = {type(m) for m in model.modules()}
    assert UpcastLinear in kinds and PackedLinear not in kinds and torch.nn.Linear not in kinds
    assert UpcastConv1d in kinds and torch.nn.Conv1d not in kinds  # the encoder's two
    assert model.output.kernel == model.layers[0].attention.wqkv.kernel == (decode_kernel == "speechrs")
    assert model.output.weight.dtype == torch.bfloat16  # compact in memory
    mel, n_audio, _ = native_pipeline._prepare_audio(str(clip))
    ids = transcription_prompt(native_pipeline.tokenizer, n_audio, "en") + [1000 + i for i in range(16)]
    audio_id = native_pipeline.audio_token_id
    agreement = compare(
        voxtral_logits(native_pipeline.model, audio_id, ids, mel), voxtral_logits(model, audio_id, ids, mel)
    )
    # measured: KL 4.9e-4, top-1 97.2% over 399 positions, as close as the native bf16 path (4.9e-4, 97.0%);
    # teacher-forced positions are all one prefill here, so the decode kernel shows in the load's probe and below
    assert agreement["kl"] < 2e-3, agreement
    loaded = speechrs.load(str(native_dir), dtype="bfloat16")
    assert "no hardware bf16" in loaded.plan.summary
    assert loaded.transcribe(str(clip), max_tokens=3).usage.completion_tokens >= 1


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        (frozenset({"avx2", "avx512f", "avx512bw"}), False),  # oneDNN emulates bf16 here: slower than fp32
        (frozenset({"avx512f", "avx512_bf16"}), True),
        (frozenset({"avx2", "amx_bf16", "amx_tile"}), True),
    ],
)
def test_native_bf16_needs_the_cpu_flags_not_only_onednn(monkeypatch, flags, native):
    from speechrs.kernels import cpu

    monkeypatch.delenv("SPEECHRS_NATIVE_BF16", raising=False)
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    cpu_native_bf16.cache_clear()
    assert cpu_native_bf16() is native
