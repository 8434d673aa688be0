"""speechrs's int8, int4 (AVX2, AVX-512 BF16, AMX) and bf16 (AVX2) kernels (csrc/x86/): exact to float32 sums
rounded once to bf16, a row's result independent of the rows beside it and of the thread count, built once into
the cache, the variant chosen per CPU, and torch's kernels kept (with the reason said) where they are not used."""

import pytest
import torch

from speechrs import kernels
from speechrs.kernels import build
from speechrs.linear import compute, quant, routes
from speechrs.linear.upcast import UpcastLinear

NAMES = {"avx2": "AVX2", "avx512": "AVX-512 BF16", "amx": "AMX / AVX-512 BF16"}  # in load lines and reprs


@pytest.fixture(params=["avx2", "avx512", "amx"])
def variant(request, monkeypatch) -> str:
    """Each variant forced on where the CPU has it (any AVX2 + FMA machine runs "avx2", one with AVX-512 BF16
    "avx512" too, one with AMX "amx" as well, whatever the default picks for its CPU); skipped with the reason
    elsewhere."""
    monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "1" if request.param == "amx" else request.param)
    if not kernels.available():
        pytest.skip(f"speechrs's kernels cannot run here: {kernels.why_not()}")
    if kernels.variant() != request.param:
        lacks = "AMX" if request.param == "amx" else "AVX-512 BF16"
        pytest.skip(f"speechrs's {request.param} kernels cannot run here: the CPU lacks {lacks} or the compiler")
    return request.param


def _bf16_variant(kind: str, variant: str) -> None:
    if kind == "bf16" and variant != "avx2":
        pytest.skip("the bf16 kernel has only its AVX2 variant (it serves CPUs without native bf16)")


def _case(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return quant.int8_codes(torch.randn(n, k, generator=g))


def _layer(kind: str, n: int, k: int, seed: int = 0, variant: str = "avx2") -> torch.nn.Module:
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed))
    if kind == "bf16":  # a bf16 model's decode rows on a CPU without native bf16 (upcast.py)
        linear = torch.nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        linear.weight.data.copy_(w)
        layer = UpcastLinear(linear)
        assert layer.kernel
        return layer
    layer = quant.Int8Linear.quantize(w) if kind == "int8" else quant.Int4Linear.quantize(w)
    assert layer.blocked and layer.kernel == variant
    return layer


def _weight(layer: torch.nn.Module) -> torch.Tensor:
    return layer.weight.float() if isinstance(layer, UpcastLinear) else layer.dequantized()


@pytest.mark.parametrize("kind", ["int8", "int4", "bf16"])
@pytest.mark.parametrize("rows", [0, 1, 2, 3, 4, 5, 7, 9, 15, 17, 64])
def test_the_kernels_are_exact_to_float32_sums_rounded_once_to_bf16(variant, kind, rows, monkeypatch):
    _bf16_variant(kind, variant)
    # the kernel at every row count (test_quant has the GEMM routes')
    monkeypatch.setattr(routes, "INT4_GEMM_ROWS", {})
    monkeypatch.setattr(routes, "INT8_KERNEL_ROWS", dict.fromkeys(("avx2", "avx512", "amx"), 10**6))
    # N not a multiple of the 8-row block; K = 9 int4 groups, 36 int8 steps
    layer = _layer(kind, 100, 288, variant=variant)
    x = torch.randn(rows, 288, generator=torch.Generator().manual_seed(rows)).to(torch.bfloat16)
    y = layer(x)
    w = _weight(layer).double()
    ref = x.double() @ w.T
    # the fp32 sums of 288 products err by a few fp32 ulps of the sum of |terms|; then one rounding to bf16
    bound = 2.0**-8 * ref.abs() + 1e-6 * (x.double().abs() @ w.abs().T)
    assert y.dtype == torch.bfloat16 and y.shape == (rows, 100)
    assert bool(((y.double() - ref).abs() <= bound).all()), ((y.double() - ref).abs() / bound).max().item()


@pytest.mark.parametrize("kind", ["int8", "int4", "bf16"])
def test_a_rows_result_does_not_depend_on_its_neighbours_or_the_threads(variant, kind):
    """Batched decoding sends one request's row among others: its numbers must be those it gets alone."""
    _bf16_variant(kind, variant)
    layer = _layer(kind, 75, 512, seed=1, variant=variant)
    x = torch.randn(17, 512, generator=torch.Generator().manual_seed(2))
    alone = torch.cat([layer(x[i : i + 1]) for i in range(17)])
    threads = torch.get_num_threads()
    try:
        for rows in (2, 3, 4, 5, 8, 17):
            assert torch.equal(layer(x[:rows]), alone[:rows]), rows
        torch.set_num_threads(1)
        assert torch.equal(layer(x), alone)
    finally:
        torch.set_num_threads(threads)


def test_the_layer_holds_the_blocked_codes_and_gives_them_back(variant):
    codes, scale = _case(100, 256)
    layer = quant.Int8Linear(codes, scale)
    name = NAMES[variant]
    shape = (7, 256, 16) if variant == "amx" else (13, 32, 8, 8)  # the AMX kernel's blocks: 16 rows, k-major
    assert layer.blocked and layer.qweight.shape == shape and f"speechrs's {name} kernel" in repr(layer)
    assert torch.equal(layer.codes(), codes) and torch.equal(layer.codes(64, 100), codes[64:])
    assert torch.equal(layer.codes(32, 100, torch.bfloat16), codes[32:].to(torch.bfloat16))
    assert torch.equal(layer.dequantized(), codes.float() * scale.float()[:, None])


def test_an_int8_layer_the_tile_kernel_cannot_take_runs_the_avx512_one(variant):
    """The AMX int8 kernel steps 32 along K: a layer whose K is not a multiple of 32 keeps the AVX-512 kernel."""
    if variant != "amx":
        pytest.skip("only the amx variant has the AMX int8 kernel")
    codes, scale = _case(40, 264)
    layer = quant.Int8Linear(codes, scale)
    assert layer.kernel == "avx512" and layer.qweight.shape == (5, 33, 8, 8)
    x = torch.randn(3, 264, generator=torch.Generator().manual_seed(4)).to(torch.bfloat16)
    w = layer.dequantized().double()
    ref = x.double() @ w.T
    bound = 2.0**-8 * ref.abs() + 1e-6 * (x.double().abs() @ w.abs().T)  # as the exactness test's
    assert bool(((layer(x).double() - ref).abs() <= bound).all())


def test_the_library_is_built_once_into_the_cache(variant, monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHRS_CACHE_DIR", str(tmp_path))
    kernels._library.cache_clear()
    try:
        assert kernels.available()
        (built,) = (tmp_path / "kernels").glob("kernels-*.so")
        stamp = built.stat().st_mtime_ns
        kernels._library.cache_clear()
        assert kernels.available() and built.stat().st_mtime_ns == stamp  # loaded, not compiled again
    finally:
        kernels._library.cache_clear()


def test_without_a_working_compiler_torch_s_kernel_runs_and_the_load_line_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "1")
    monkeypatch.setenv("SPEECHRS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails: nothing cached under this name either
    kernels._library.cache_clear()
    try:
        reason = kernels.why_not()
        if reason and "could not build" not in reason:
            pytest.skip(f"the kernels are not for this machine anyway: {reason}")
        assert reason is not None and "false failed" in reason
        codes, scale = _case(64, 128)
        layer = quant.Int8Linear(codes, scale)
        x = torch.randn(2, 128, generator=torch.Generator().manual_seed(0))
        exact = x.to(torch.bfloat16).float() @ layer.dequantized().T  # torch's kernel rounds x, then the sums, to bf16
        assert not layer.blocked and torch.allclose(layer(x).float(), exact, rtol=2**-7, atol=1e-3)
        for kind in ("int8", "int4"):
            summary = compute.plan("cpu", "auto", kind).summary
            assert "torch's kernel: speechrs's not used, could not build them: false failed" in summary, summary
    finally:
        kernels._library.cache_clear()


def test_the_load_line_names_speechrs_s_kernels_where_they_run(variant, monkeypatch):
    name = NAMES[variant]
    for kind in ("int8", "int4"):
        summary = compute.plan("cpu", "auto", kind).summary
        assert f"{kind} weight-only decoder linears (speechrs's {name} kernel)" in summary, summary
    monkeypatch.setenv("SPEECHRS_NATIVE_BF16", "0")  # a bf16 model on a CPU without native bf16
    compute.cpu_native_bf16.cache_clear()
    summary = compute.plan("cpu", "bfloat16").summary
    assert "matmuls of 256+ rows (encoder, prefill) and attention run in fp32, fewer through speechrs's" in summary


@pytest.mark.parametrize(
    ("level", "flags", "chosen"),
    [
        ("AVX2", {"avx2", "fma", "f16c"}, "avx2"),  # Zen 3: measured faster than torch's
        ("AVX512", {"avx2", "fma", "f16c", *kernels.AVX512_FLAGS}, "avx512"),  # Zen 5: measured faster
        ("AVX512", {"avx2", "fma", "f16c", *kernels.AVX512_FLAGS, *kernels.AMX_FLAGS}, "amx"),  # SPR class
        ("AVX512", {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}, "without AVX-512 BF16"),
        ("DEFAULT", {"sse4_2"}, "lacks AVX2/FMA/F16C"),
    ],
)
def test_the_default_takes_them_where_they_were_measured_faster(monkeypatch, level, flags, chosen):
    monkeypatch.delenv("SPEECHRS_CPU_KERNELS", raising=False)
    monkeypatch.setattr(build, "_flags", lambda: frozenset(flags))  # where the variant is chosen
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: level)
    if chosen in ("avx2", "avx512", "amx"):
        if kernels.why_not() is not None:
            pytest.skip(f"speechrs's kernels cannot run here: {kernels.why_not()}")
        if chosen == "amx" and not kernels._amx_granted():
            pytest.skip("this CPU (or its compiler, or Linux) gives no AMX tiles: the amx variant cannot run here")
        assert kernels.variant() == chosen
        if chosen != "avx2":  # the AVX-512 BF16 variant without tiles, on request
            monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "avx512")
            assert kernels.variant() == "avx512"
        monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "avx2")
        assert kernels.variant() == "avx2"
    else:
        reason = kernels.why_not()
        assert reason is not None and chosen in reason and kernels.variant() is None, reason


def test_an_unknown_setting_is_named_and_keeps_torch_s(monkeypatch):
    monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "avx1024")
    reason = "SPEECHRS_CPU_KERNELS='avx1024' is none of 0 (never), 1 (the best variant), avx2, avx512"
    assert kernels.why_not() == reason
    assert not quant.Int8Linear(*_case(8, 64)).blocked


def test_the_setting_turns_them_off(monkeypatch):
    monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "0")
    assert kernels.why_not() == "SPEECHRS_CPU_KERNELS=0" and not quant.Int8Linear(*_case(8, 64)).blocked


@pytest.mark.parametrize("kind", ["int8", "int4", "bf16"])
def test_models_batch_requests_through_them(variant, native_dir, dia_dirs, kind, monkeypatch):
    """Their results do not depend on the rows beside a request's, so the load-time probe lets batched decoding
    stack requests' rows into one call (layers.batch_invariant). bf16: a bf16 model on a CPU without native
    bf16 (the path taken on any CPU with SPEECHRS_NATIVE_BF16=0)."""
    from speechrs.dia.checkpoint import load_dia
    from speechrs.kernels.cpu import cpu_native_bf16
    from speechrs.voxtral.checkpoint import load_voxtral

    _bf16_variant(kind, variant)
    dtype, quantize = (torch.bfloat16, None) if kind == "bf16" else (torch.float32, kind)
    monkeypatch.setenv("SPEECHRS_NATIVE_BF16", "0")
    cpu_native_bf16.cache_clear()
    voxtral = load_voxtral(native_dir, "native", dtype, quantize=quantize)
    dia = load_dia(dia_dirs[0], dtype, quantize=quantize)
    kernel = True if kind == "bf16" else variant
    assert voxtral.output.kernel == kernel and dia.logits_dense.kernel == kernel
    assert voxtral.batch_invariant and dia.batch_invariant
