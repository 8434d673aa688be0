"""int8 / int4 weight-only quantization (quant.py): each kernel against the same layer in float32 from the
dequantized weights, and each quantized model against the float32 model holding the dequantized weights,
teacher-forced. Random tiny weights have almost no margin between their top logits, so what these tests can
judge is that the fast path computes what it claims to; a format's quality on real weights is for
benchmarks/quality.py (docs/performance.md, "Quality")."""

import pytest
import torch
import torch.nn.functional as F
from quality import compare, dia_logits, voxtral_logits

from speechrs import kernels
from speechrs.dia.checkpoint import load_dia
from speechrs.dia.pipeline import DiaPipeline, SpeakOptions, encode_text
from speechrs.kernels import cpu
from speechrs.linear import quant, quant_codes, routes
from speechrs.linear.quant import Int4Linear, Int8Linear
from speechrs.voxtral.checkpoint import load_voxtral
from speechrs.voxtral.tekken import transcription_prompt

KINDS = {"int8": Int8Linear, "int4": Int4Linear}


def _close_to_bf16_rounding(y: torch.Tensor, ref: torch.Tensor) -> None:
    """The kernels accumulate in float32 and return bfloat16: each output within two bf16 ulps of the float32
    product of the bf16-rounded input and the dequantized weight (accumulation order is the kernel's own)."""
    err = (y.float() - ref).abs()
    bound = 2 * 2.0**-8 * ref.abs() + 1e-3 * ref.abs().max()
    assert bool((err <= bound).all()), f"worst excess {(err - bound).max().item():.3g}"


# each quantization with each CPU kernel, on any machine that can run it (the default picks one per CPU): speechrs's
# AMX (int8 and int4 through the tile unit), AVX-512 BF16 and AVX2 kernels (kernels/csrc/x86/) and torch's
# _weight_int8pack_mm / _weight_int4pack_mm_for_cpu
PATHS = [f"{kind}-{kernel}" for kind in ("int8", "int4") for kernel in ("amx", "avx512", "avx2", "torch")]
SETTINGS = {"amx": "1", "avx512": "avx512", "avx2": "avx2", "torch": "0"}  # SPEECHRS_CPU_KERNELS for each


@pytest.fixture(params=["bf16", "fp32"])
def gemm(request, monkeypatch) -> str:
    """The dtype of a prefill's GEMM route, on any CPU: bf16 (SPEECHRS_NATIVE_BF16=1, the route of a CPU with native
    bf16, emulated by torch on one without) or fp32 (=0, the route of a CPU without)."""
    monkeypatch.setenv("SPEECHRS_NATIVE_BF16", "1" if request.param == "bf16" else "0")
    cpu.cpu_native_bf16.cache_clear()
    return request.param  # the cached answer is cleared after the test (conftest)


def _choose_kernel(path: str, monkeypatch) -> str:
    """Layers made from now on in this test take `path`'s kernel; returns the quantization."""
    kind, kernel = path.split("-")
    monkeypatch.setenv("SPEECHRS_CPU_KERNELS", SETTINGS[kernel])
    if kernel != "torch" and kernels.variant() != kernel:
        why = kernels.why_not() or f"the CPU lacks {'AMX' if kernel == 'amx' else 'AVX-512 BF16'} or the compiler"
        pytest.skip(f"speechrs's {kernel} kernels cannot run here: {why}")
    return kind


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 383])
def test_kernel_equals_the_float32_layer_of_its_dequantized_weight(path, rows, monkeypatch):
    kind = _choose_kernel(path, monkeypatch)
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(9252, 256, generator=g) / 16  # 9 x 1028 rows: Dia's logits, not a multiple of the row block
    x = torch.randn(rows, 256, generator=g)
    layer = KINDS[kind].quantize(w)
    assert layer.kernel == (None if path.endswith("torch") else path[5:])
    weight = layer.dequantized()
    if kind == "int4" and rows >= layer.dequant_rows and layer.gemm_dtype == torch.bfloat16:
        weight = weight.to(torch.bfloat16).float()  # a prefill's bf16 GEMM multiplies the weights rounded
    _close_to_bf16_rounding(layer(x), F.linear(x.to(torch.bfloat16).float(), weight))
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16 and layer(x).dtype == torch.float32


def test_int4_prefill_rows_take_the_bf16_gemm_and_agree_with_the_kernel(monkeypatch):
    """From dequant_rows on (a prefill) speechrs's blocked int4 weights are made bf16 a block at a time for the GEMM.
    weights() gives the layer's own dequantized weight; the GEMM's result differs from the exact product by the
    weights' bf16 rounding and the output's: over 20 seeds at most 1.0 bf16 ulp of the output's scale (2^-8 of
    max |y|) from the exact product and 1.8 from the kernel's result; bound here at 2 and 3."""
    _choose_kernel("int4-avx512", monkeypatch)
    if not quant.cpu_native_bf16():
        pytest.skip("the int4 GEMM path is taken only where the CPU has native bf16")
    monkeypatch.setattr(quant_codes, "BLOCK_ELEMENTS", 64 * 256)  # several row blocks, as a full-size layer has
    monkeypatch.setattr(quant, "DEQUANT_BLOCK_BYTES", 64 * 256 * 2)
    g = torch.Generator().manual_seed(3)
    layer = Int4Linear.quantize(torch.randn(1000, 256, generator=g) / 16)
    assert torch.equal(layer.weights(0, 1000, torch.float32), layer.dequantized())
    assert torch.equal(layer.weights(64, 200, torch.float32), layer.dequantized()[64:200])
    bf16 = layer.dequantized().to(torch.bfloat16)  # the GEMM's weights: made in C on AVX-512 BF16, each bit the same
    assert torch.equal(layer.weights(0, 1000, torch.bfloat16), bf16)
    assert torch.equal(layer.weights(48, 999, torch.bfloat16), bf16[48:999])
    x = torch.randn(layer.dequant_rows, 256, generator=g)
    exact = F.linear(x.to(torch.bfloat16).double(), layer.dequantized().double())
    kernel = kernels.int4_linear(x, layer.packed, layer.scale_zero, 32, 1000, layer.kernel)
    gemm = layer(x)
    scale = exact.abs().max()
    assert (gemm.double() - kernel.double()).abs().max() <= 3 * 2**-8 * scale
    assert (gemm.double() - exact).abs().max() <= 2 * 2**-8 * scale
    monkeypatch.setattr(routes, "INT4_GEMM_ROWS", {})
    assert torch.equal(layer(x), kernel)  # below dequant_rows: the kernel


def test_int4_prefill_rows_without_native_bf16_take_the_fp32_gemm(monkeypatch):
    """Without native bf16 (forced here on any CPU) speechrs's AVX2 int4 weights are made fp32 for the GEMM from
    dequant_rows on, in C: the layer's own dequantized weight bit for bit, so the GEMM's result is the exact
    product rounded once to bf16, up to the order of the fp32 sums (bound at one bf16 ulp of each output)."""
    _choose_kernel("int4-avx2", monkeypatch)
    monkeypatch.setenv("SPEECHRS_NATIVE_BF16", "0")
    quant.cpu_native_bf16.cache_clear()
    monkeypatch.setattr(quant, "DEQUANT_BLOCK_BYTES", 64 * 256 * 4)  # several row blocks, as a full-size layer has
    g = torch.Generator().manual_seed(3)
    layer = Int4Linear.quantize(torch.randn(1000, 256, generator=g) / 16)
    assert layer.gemm_dtype == torch.float32 and layer.dequant_rows == routes.INT4_GEMM_ROWS["avx2"]
    assert torch.equal(layer.weights(0, 1000, torch.float32), layer.dequantized())
    assert torch.equal(layer.weights(64, 203, torch.float32), layer.dequantized()[64:203])
    x = torch.randn(layer.dequant_rows, 256, generator=g)
    exact = F.linear(x.to(torch.bfloat16).double(), layer.dequantized().double())
    gemm = layer(x).double()
    assert bool(((gemm - exact).abs() <= 2**-8 * exact.abs() + 1e-6).all())
    kernel = kernels.int4_linear(x[:3], layer.packed, layer.scale_zero, 32, 1000, "avx2")
    assert torch.equal(layer(x[:3]), kernel)  # below dequant_rows: the kernel


def test_quantization_error_is_within_half_a_step():
    w = torch.randn(512, 256, generator=torch.Generator().manual_seed(0))
    q8 = Int8Linear.quantize(w)
    assert bool(((q8.dequantized() - w).abs() <= q8.scale.float()[:, None] / 2 * 1.01 + 1e-6).all())
    q4 = Int4Linear.quantize(w)
    step = q4.group_scales()[..., 0].float().T.repeat_interleave(quant.INT4_GROUP, dim=1)  # (N, K)
    assert bool(((q4.dequantized() - w).abs() <= step / 2 * 1.01 + 1e-3).all())


def test_row_blocks_quantize_exactly_as_the_whole_matrix(monkeypatch):
    """The torch ops quantize a row block at a time (speechrs's quantizers a row at a time: test_quantizer.py)."""
    monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "0")
    w = torch.randn(256, 128, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 128)
    for cls in KINDS.values():
        monkeypatch.setattr(quant_codes, "BLOCK_ELEMENTS", 64 * 128)  # four blocks of 64 rows
        assert len(quant_codes.row_blocks(256, 128)) == 4
        blocked = cls.quantize(w)
        monkeypatch.setattr(quant_codes, "BLOCK_ELEMENTS", 2**30)
        whole = cls.quantize(w)
        assert torch.equal(blocked.dequantized(), whole.dequantized()) and torch.equal(blocked(x), whole(x))


class ExactLayer(torch.nn.Module):
    """What a quantized layer claims to compute, in float32 from its codes: the bf16-rounded input (the kernels'
    activation dtype) times the dequantized weight, rounded to bf16 (their output dtype). From the layer's
    dequant_rows on, a GEMM's: int8 the product of input and codes rounded to bf16, then scaled; int4 the weight
    rounded to bf16 first (where the GEMM is bf16). A bias (the audio encoder's int8 Linears) is added to that in
    fp32."""

    def __init__(self, layer: Int8Linear | Int4Linear):
        super().__init__()
        self.weight = layer.dequantized()
        self.int8 = isinstance(layer, Int8Linear)
        self.dequant_rows = layer.dequant_rows
        self.round_weight = isinstance(layer, Int4Linear) and layer.gemm_dtype == torch.bfloat16
        self.bias = layer.bias.float() if isinstance(layer, Int8Linear) and layer.bias is not None else None
        if self.int8:
            self.codes, self.scale = layer.codes(dtype=torch.float32), layer.scale.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16).float()
        if xb.reshape(-1, xb.shape[-1]).shape[0] < self.dequant_rows:
            y = F.linear(xb, self.weight).to(torch.bfloat16)
        elif self.int8:
            y = (F.linear(xb, self.codes).to(torch.bfloat16).float() * self.scale).to(torch.bfloat16)
        else:
            w = self.weight.to(torch.bfloat16).float() if self.round_weight else self.weight
            y = F.linear(xb, w).to(torch.bfloat16)
        return (y if self.bias is None else y.float() + self.bias).to(x.dtype)


def _exact_reference(reference: torch.nn.Module, quantized: torch.nn.Module) -> int:
    """Put in `reference` (the same checkpoint in float32, unquantized) an ExactLayer wherever `quantized` has a
    quantized layer; returns how many."""
    n = 0
    for name, module in quantized.named_modules():
        if isinstance(module, (Int8Linear, Int4Linear)):
            parent, _, leaf = name.rpartition(".")
            setattr(reference.get_submodule(parent), leaf, ExactLayer(module))
            n += 1
    return n


def _voxtral_case(pipeline, clip) -> tuple[list[int], int, torch.Tensor]:
    """(ids, prompt length, mel): the clip's transcription prompt, then 64 tokens the float32 model chose."""
    mel, n_audio, _ = pipeline._prepare_audio(str(clip))
    prompt = transcription_prompt(pipeline.tokenizer, n_audio, "en")
    ids = prompt + [e.id for e in pipeline.transcribe(str(clip), "en") if hasattr(e, "id")][:64]
    return ids, len(prompt), mel


# A quantized model against the float32 model holding its ExactLayers: each layer gives the exact layer's bf16 output
# but where another summation order (the bf16 GEMM's, a kernel's) lands across a bf16 rounding boundary, ~1 output
# in 10^5. The tiny random model's logits come out of a bf16-rounded head, so a few percent of positions hold an exact
# tie between their first two logits, which any such flip may swap: a top-1 rate over all positions depends on the
# CPU's summation order. So the logits are held to EXACT_BOUND of their scale (measured at most 2^-7 on AMX, AVX-512
# and AVX2 routes, each kernel forced, native bf16 or not: docs/testing.md) and top-1 is counted only where the
# first two logits are more than that apart; there no flip within the bound can swap them.
EXACT_BOUND = 2**-5


def _assert_close_logits(ref: torch.Tensor, ours: torch.Tensor, bound: float, decided: int, kl: float):
    """ours within `bound` of ref's scale, the same top-1 wherever ref's first two logits are more than that apart
    (at least `decided` positions), and mean KL under `kl`."""
    agreement = compare(ref, ours, bound * ref.abs().max().item())
    assert agreement["max_diff"] <= bound, agreement
    assert agreement["decided"] >= decided and agreement["top1"] == 1.0, agreement
    assert agreement["kl"] < kl, agreement


@pytest.mark.parametrize("path", PATHS)
def test_quantized_voxtral_equals_its_layers_computed_exactly(
    native_dir, native_pipeline, clip, path, gemm, monkeypatch
):
    """Teacher-forced over the prompt (one prefill: the GEMM routes) and 64 continuation tokens one at a time (decode
    steps: each kernel). Measured: max difference 2^-7 of the logits' scale, top-1 100% over the 120-150 of 447
    positions whose margin exceeds the bound, KL 2.6e-4 (no native bf16: 1e-4)."""
    kind = _choose_kernel(path, monkeypatch)
    quantized = load_voxtral(native_dir, "native", torch.float32, quantize=kind)
    reference = load_voxtral(native_dir, "native", torch.float32)
    encoder = 6 * quantized.cfg.encoder.n_layers + 2  # int8 whatever `kind`: q, k, v, o, w1, w2; the adapter's two
    assert _exact_reference(reference, quantized) == 4 * quantized.cfg.n_layers + 1 + encoder  # qkv, o, w13, w2; head
    ids, n_prompt, mel = _voxtral_case(native_pipeline, clip)
    audio_id = native_pipeline.audio_token_id
    steps = len(ids) - n_prompt
    ours, ref = (voxtral_logits(m, audio_id, ids, mel, steps=steps) for m in (quantized, reference))
    _assert_close_logits(ref, ours, EXACT_BOUND, decided=100, kl=1e-3)


def test_int8_voxtral_against_the_original_float32(native_dir, native_pipeline, clip):
    """The 65 continuation positions, the audio encoder in int8 too. Measured on the tiny model (native bf16 or
    not): max difference 2^-5.6 of the logits' scale, KL 0.0021, top-1 100% where the margin exceeds 2^-6 (51
    positions); one near-tie in all 65 flips. Bound at 2^-4 (20 positions decided) and KL 3e-3."""
    quantized = load_voxtral(native_dir, "native", torch.float32, quantize="int8")
    ids, n_prompt, mel = _voxtral_case(native_pipeline, clip)
    audio_id = native_pipeline.audio_token_id
    ours = voxtral_logits(quantized, audio_id, ids, mel, n_prompt)
    ref = voxtral_logits(native_pipeline.model, audio_id, ids, mel, n_prompt)
    _assert_close_logits(ref, ours, 2 * EXACT_BOUND, decided=10, kl=3e-3)


@pytest.mark.parametrize("path", PATHS)
def test_quantized_dia_equals_its_layers_computed_exactly(dia_dirs, dac, path, gemm, monkeypatch):
    """Teacher-forced CFG logits of 64 greedy rows, every channel (576 positions), the text encoder in int8 too.
    CFG's x4 amplifies the layers' bf16 rounding flips: measured max difference 2^-6 of the logits' scale, top-1
    100% over the 180-210 positions whose margin exceeds 2^-4, KL 2e-4-1.1e-3; bound at 2^-4 and 3e-3."""
    kind = _choose_kernel(path, monkeypatch)
    quantized = load_dia(dia_dirs[0], torch.float32, quantize=kind)
    reference = load_dia(dia_dirs[0], torch.float32)
    encoder = 4 * quantized.cfg.enc_layers  # int8 whatever `kind`: qkv, o, gate_up, down
    assert _exact_reference(reference, quantized) == 8 * quantized.cfg.dec_layers + 1 + encoder
    pipeline = DiaPipeline(reference, dac)
    text_ids = encode_text("[S1] Hello there. [S2] Hi! (laughs)", reference.cfg)
    opts = pipeline.options(SpeakOptions(max_tokens=64, temperature=0))
    rows = list(pipeline.generate_codes(text_ids, opts))[-1][:-1]  # the rows the float32 model read
    ref, ours = (dia_logits(m, text_ids, rows) for m in (reference, quantized))
    _assert_close_logits(ref, ours, 2 * EXACT_BOUND, decided=120, kl=3e-3)


def test_the_python_api_and_the_load_line_name_the_quantization(native_dir, dia_dirs, dac_dirs, clip):
    import speechrs

    vox = speechrs.load(str(native_dir), quantize="int8")
    assert "int8" in vox.plan.summary and vox.transcribe(str(clip), max_tokens=4).usage.completion_tokens >= 1
    assert "decoder linears and the audio encoder's in int8" in vox.plan.summary, vox.plan.summary
    assert isinstance(vox.pipeline.model.mm_whisper_embeddings.audio_language_projection[0], Int8Linear)
    dia = speechrs.load(str(dia_dirs[1]), dac=str(dac_dirs[1]), quantize="int4")
    assert isinstance(dia.pipeline.model.logits_dense, Int4Linear)
    assert "int4 weight-only decoder linears and the text encoder's in int8 (" in dia.plan.summary, dia.plan.summary
    assert isinstance(dia.pipeline.model.encoder.layers[0].mlp.down_proj, Int8Linear)
    assert len(dia.speak("[S1] Hi.", max_tokens=32, seed=0).pcm) % 512 == 0
    with pytest.raises(Exception, match="unknown quantization 'int3'"):
        speechrs.load(str(native_dir), quantize="int3")


def test_the_server_quantizes_each_model_as_asked(native_dir, dia_dirs, dac_dirs):
    from speechrs.server.app import build

    lines: list[str] = []
    engine = build(
        [str(native_dir), str(dia_dirs[0])], dac=str(dac_dirs[0]), quantize=["int8", "none"], log=lines.append
    )
    assert isinstance(engine.models[0].voxtral.model.output, Int8Linear)
    assert not isinstance(engine.models[1].dia.model.logits_dense, (Int8Linear, Int4Linear))
    assert "int8 weight-only" in lines[0] and "weight-only" not in lines[1]


def test_the_quality_script_reports_both_models(native_dir, dia_dirs, capsys):
    """The bounds only catch a broken path (what the tiny random models measure is no quality figure): measured on
    2 Zen 3 cores, Voxtral int8 KL 0.0020-0.0024 (top-1 100%); Dia int8 against float32 KL 0.017-0.022, top-1
    93-95% over the two generations (the decoder alone 0.005-0.006: the tiny text encoder, 128 wide, feeds every
    cross-attention and CFG's x4), int4 0.42-0.48."""
    import quality

    result = quality.voxtral_quality(native_dir, "native", "int8", "auto", tokens=8)
    assert set(result) == {"transcription", "chat"} and all(r["positions"] == 9 for r in result.values())
    assert all(r["kl"] < 3e-3 for r in result.values()), result
    result = quality.dia_quality(dia_dirs[0], "int8", "auto", tokens=32)
    assert result["dialogue"]["positions"] == 32 * 9 and result["dialogue"]["kl"] < 4e-2, result
