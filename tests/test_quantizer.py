"""speechrs's quantizers (csrc/quantize.c) against quant.py's torch ops: the same codes and scales bit for bit, for
every weight dtype and layout, and for a fused projection's parts quantized in place."""

import pytest
import torch

from speechrs import kernels
from speechrs.linear import quant, quant_codes


@pytest.fixture
def torch_ops(monkeypatch):
    """A function computing (codes, scales) with quant.py's torch ops: the reference."""
    if not kernels.quantizes(torch.zeros(8, 8)):
        pytest.skip(f"speechrs's quantizers cannot run here: {kernels.why_not()}")

    def run(function, *args):
        with monkeypatch.context() as m:
            m.setenv("SPEECHRS_CPU_KERNELS", "0")
            assert not kernels.quantizes(torch.zeros(8, 8))
            return function(*args)

    return run


def _weight(n: int, k: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Rows of very different ranges, a zero row, a lone large value, and in fp32 values exactly half way between
    two codes (w / s = j + 0.5, which both must round to even)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * torch.rand(n, 1, generator=g).pow(4) * 0.2
    w[1] = 0
    w[2, 5] = 3.0
    if dtype == torch.float32:  # a row whose absmax is 1: s = bf16(1 / 127 * (1 + 2^-7)), then ties on its codes
        s = torch.tensor(1 / 127 * (1 + 2.0**-7)).to(torch.bfloat16).float()
        w[3] = (torch.arange(k) % 100 - 50 + 0.5) * s
        w[3, 0] = 1.0
    return w.to(dtype)


DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel", [None, "avx2", "avx512", "amx"])
@pytest.mark.parametrize("shape", [(37, 256), (64, 96)])
def test_int8_codes_are_torch_s_in_every_layout(torch_ops, dtype, kernel, shape):
    w = _weight(*shape, dtype)
    ref_codes, ref_scale = torch_ops(quant.int8_codes, w, kernel)
    codes, scale = quant.int8_codes(w, kernel)
    assert torch.equal(scale, ref_scale) and torch.equal(codes, ref_codes)
    if kernel is not None:  # and the layout is the one the kernel reads
        assert torch.equal(codes, quant_codes.blocked_codes(torch_ops(quant.int8_codes, w)[0], kernel))


def test_int8_codes_of_a_width_not_a_multiple_of_8(torch_ops):
    w = _weight(20, 100, torch.float32)
    assert all(map(torch.equal, quant.int8_codes(w), torch_ops(quant.int8_codes, w)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_codes_are_torch_s(torch_ops, dtype, group):
    w = _weight(37, 256, dtype)
    ref = torch_ops(quant.int4_codes, w, group)
    assert all(map(torch.equal, quant.int4_codes(w, group), ref))


@pytest.mark.parametrize("kind", ["int8", "int4"])
@pytest.mark.parametrize("sizes", [(48, 16, 16), (40, 24, 13), (13, 24)])
def test_parts_quantize_as_their_concatenation(torch_ops, kind, sizes):
    """A fused projection's parts are quantized each into its rows of the whole (no concatenated copy); where a
    part would not start on a block the concatenation is quantized instead: the same numbers either way."""
    parts = [_weight(n, 128, torch.bfloat16, seed=i) for i, n in enumerate(sizes)]
    whole = torch.cat(parts)
    for kernel in [None, "avx2", "amx"] if kind == "int8" else [None]:
        codes = quant.int8_codes if kind == "int8" else quant.int4_codes
        args = (kernel,) if kind == "int8" else ()
        assert all(map(torch.equal, codes(parts, *args), torch_ops(codes, whole, *args)))


def test_a_fused_layer_from_parts_computes_as_one_from_the_whole():
    parts = [_weight(n, 128, torch.bfloat16, seed=i) for i, n in enumerate((64, 32, 32))]
    x = torch.randn(3, 128)
    for cls in (quant.Int8Linear, quant.Int4Linear):
        fused, whole = cls.quantize(parts), cls.quantize(torch.cat(parts))
        assert torch.equal(fused.dequantized(), whole.dequantized()) and torch.equal(fused(x), whole(x))


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_a_weight_released_a_part_at_a_time_quantizes_as_a_whole(torch_ops, kind, monkeypatch):
    """The loader quantizes Voxtral's output head a part at a time, releasing each part's pages as its codes are
    made (weights.release_pages): the same layer as from the whole weight."""
    monkeypatch.setattr(quant, "RELEASE_PART_BYTES", 64 * 128 * 2)  # parts of 64 rows of bf16
    parent = torch.nn.Module()
    parent.head = torch.nn.Linear(128, 300, bias=False, dtype=torch.bfloat16)
    w = _weight(300, 128, torch.bfloat16)
    parent.head.weight.data.copy_(w)
    released: list[torch.Tensor] = []
    quant.quantize_linears(parent, ["head"], kind, released.append)
    whole = quant.quantized_linear(w, kind)
    assert torch.equal(parent.head.dequantized(), whole.dequantized())
    assert [len(p) for p in released] == [64, 64, 64, 64, 44]


def test_released_pages_of_a_mapped_file_read_back_unchanged(tmp_path):
    from safetensors.torch import save_file

    from speechrs.weights import read_safetensors, release_pages

    w = torch.randn(4096, 256, generator=torch.Generator().manual_seed(0))
    save_file({"w": w}, str(tmp_path / "w.safetensors"))
    mappings: list = []
    mapped = dict(read_safetensors(tmp_path / "w.safetensors", mappings))["w"]
    assert torch.equal(mapped, w)
    release_pages(mappings, mapped[1000:3000])  # dropped from this process, still in the file's page cache
    assert torch.equal(mapped, w)
    anonymous = w.clone()
    release_pages(mappings, anonymous)  # not a mapped file: left alone
    assert torch.equal(anonymous, w)


def test_codes_are_blocked_alike_at_any_offset():
    """Stored int8 codes are blocked at load as 8-byte words where they lie 8-byte aligned (a file's tensors may lie
    anywhere), else byte by byte: the same layout either way."""
    codes = torch.randint(-127, 128, (40, 64), dtype=torch.int8, generator=torch.Generator().manual_seed(0))
    buffer = torch.zeros(40 * 64 + 3, dtype=torch.int8)
    buffer[3:] = codes.flatten()
    unaligned = buffer[3:].view(40, 64)
    assert unaligned.storage_offset() % 8 == 3
    for kernel in ("avx2", "amx"):
        ref = torch.stack([codes[r0 : r0 + 8] for r0 in range(0, 40, 8)])  # (5, 8, 64): blocks of 8 rows
        if kernel == "avx2":  # (N/8, K/8, 8, 8): each block's 8 rows' next 8 codes in 64 bytes
            ref = ref.view(5, 8, 8, 8).transpose(1, 2)
            assert torch.equal(quant_codes.blocked_codes(codes, kernel), ref)
        assert torch.equal(quant_codes.blocked_codes(unaligned, kernel), quant_codes.blocked_codes(codes, kernel))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kernel", ["avx2", "avx512"])
def test_int4_codes_written_blocked_are_the_portable_ones_blocked(dtype, kernel):
    """The quantizer writes int4 straight into the kernels' layouts (rows per block 8, or 16 for the wide ones),
    part by part: the tensors Int4Linear.from_codes blocks from the portable codes, bit for bit, a short last block
    padded with zero rows. Either layout is written by the AVX2 quantizer, so both are checked on any machine."""
    from speechrs.linear.quant import Int4Linear

    if isinstance(kernels._library(), str):
        pytest.skip(f"speechrs's quantizer cannot run here: {kernels._library()}")
    g = torch.Generator().manual_seed(0)
    parts = [(torch.randn(n, 256, generator=g) / 10).to(dtype) for n in (48, 16, 20)]  # 84 rows: a short block
    codes, scale_zero = quant_codes.int4_blocked_codes(parts, 32, kernel)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Int4Linear, "_speechrs_kernel", staticmethod(lambda device: kernel))
        reference = Int4Linear.from_codes(*quant_codes.int4_codes(parts, 32), 32)
    assert torch.equal(codes, reference.packed) and torch.equal(scale_zero, reference.scale_zero)
