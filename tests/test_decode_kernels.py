"""speechrs's small ops of a bf16 decode step (csrc/decode.c). The single-query attention over bf16 KV caches:
within one bf16 rounding of the float32 computation on the same bf16 values, for every grouping of query heads,
head size, length and cache view; bf16 caches where it runs, and the shapes it does not take left to torch. The
RMSNorm and the RoPE of a few rows: torch's bits."""

import pytest
import torch
import torch.nn.functional as F

from speechrs import kernels, layers
from speechrs.kernels import cpu, ops


@pytest.fixture
def kernel():
    if not kernels.available():
        pytest.skip(f"speechrs's kernels cannot run here: {kernels.why_not()}")
    return ops  # what kernels.bf16_step_kernels() gives where it runs


_CACHED = (cpu.cpu_native_bf16, cpu.cpu_amx, kernels.bf16_step_kernels)


@pytest.fixture
def no_native_bf16(monkeypatch):
    """The path of a CPU without native bf16 (where layers uses these kernels), whatever this CPU is."""
    monkeypatch.setenv("SPEECHRS_NATIVE_BF16", "0")
    monkeypatch.setenv("SPEECHRS_AMX", "0")
    for cached in _CACHED:
        cached.cache_clear()
    # the cached answers are cleared after the test, once the environment is restored (conftest)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """float32 attention on the same bf16 values (GQA: query head h reads kv head h // (H / K))."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(groups, dim=1), v.float().repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q.float(), k, v, scale=scale)


# (batch, query heads, kv heads, positions, head dim): Voxtral's decoder (32 / 8 heads), Dia's self- (16 / 4) and
# cross-attention (16 / 16), and groups of 3 and 5 (the kernel takes query heads 4 and 2 at a time), head dims 32-256
SHAPES = [(1, 32, 8, 400, 128), (2, 16, 4, 37, 128), (1, 16, 16, 121, 128), (2, 6, 2, 7, 64), (1, 5, 1, 1, 32),
          (3, 10, 2, 33, 256)]  # fmt: skip


@pytest.mark.parametrize("shape", SHAPES)
def test_within_one_bf16_rounding_of_float32_attention_on_a_cache_view(kernel, shape):
    B, H, K, S, E = shape
    g = torch.Generator().manual_seed(S)
    cache_k, cache_v = (torch.randn(B, K, S + 9, E, generator=g).to(torch.bfloat16) for _ in range(2))
    k, v = cache_k[:, :, :S], cache_v[:, :, :S]  # what KVCache.update returns: strided, rows contiguous
    q = torch.randn(B, H, 1, E, generator=g).to(torch.bfloat16)
    assert kernel.attends(q, k, v)
    ours = kernel.attend_one(q, k, v, scale=E**-0.5)
    ref = _reference(q, k, v, E**-0.5)
    assert ours.dtype == torch.bfloat16 and ours.shape == (B, H, 1, E)
    # fp32 sums in another order than torch's, then one rounding to bf16: at most one bf16 step apart
    assert ((ours.float() - ref).abs() <= ref.abs() * 2**-8 + 1e-6).all()
    assert S == 1 or not torch.equal(ours[:, 0], ours[:, -1])  # the heads attend with their own queries


def test_shapes_it_does_not_take_stay_with_torch(kernel, no_native_bf16):
    q = torch.randn(1, 4, 1, 64).to(torch.bfloat16)
    k = v = torch.randn(1, 2, 10, 64).to(torch.bfloat16)
    assert kernel.attends(q, k, v)
    assert not kernel.attends(q.float(), k.float(), v.float())
    q48, k48 = torch.randn(1, 4, 1, 48).to(torch.bfloat16), torch.randn(1, 2, 10, 48).to(torch.bfloat16)
    assert not kernel.attends(q48, k48, k48)  # head dim not a multiple of 32
    transposed = torch.randn(1, 2, 64, 10).to(torch.bfloat16).transpose(-1, -2)
    assert not kernel.attends(q, transposed, transposed)  # positions not contiguous rows
    assert kernels.bf16_step_kernels() is kernel and torch.equal(
        layers.attend_one(q, k, v, 0.1), kernel.attend_one(q, k, v, 0.1)
    )
    assert torch.equal(layers.attend_one(q48, k48, k48, 0.1), _torch_path(q48, k48, k48, 0.1))


def _torch_path(q, k, v, scale):
    B, H, _, E = q.shape
    scores = q.reshape(B, k.shape[1], H // k.shape[1], E).float() @ k.float().transpose(-1, -2)
    return ((scores * scale).softmax(dim=-1) @ v.float()).to(q.dtype).reshape(B, H, 1, E)


def test_a_bf16_model_keeps_bf16_caches_where_the_kernel_reads_them(kernel, no_native_bf16, monkeypatch):
    weight = torch.zeros(2, 2, dtype=torch.bfloat16)
    assert layers.cache_dtype(weight) == torch.bfloat16
    assert layers.cache_dtype(weight.half()) == layers.cache_dtype(weight.float()) == torch.float32
    monkeypatch.setenv("SPEECHRS_CPU_KERNELS", "0")  # without speechrs's kernels: fp32 caches, torch's matmuls
    kernels.bf16_step_kernels.cache_clear()
    assert layers.cache_dtype(weight) == torch.float32


@pytest.mark.parametrize("rows", [1, 2, 5])
@pytest.mark.parametrize("dim", [8, 1024, 2048, 3072])
def test_rms_norm_gives_torch_s_bf16_rows(kernel, no_native_bf16, rows, dim):
    """Two roundings to bf16 as torch makes them; only the sum of squares runs in another order, which can move the
    mean's last bit: measured, every element of these cases equal. Held to 99.9% equal, the rest one bf16 step."""
    g = torch.Generator().manual_seed(dim + rows)
    x = (3 * torch.randn(rows, 1, dim, generator=g)).to(torch.bfloat16)
    norm = layers.RMSNorm(dim, 1e-5).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(dim, generator=g) + 0.5)
    ref = norm.weight * F.rms_norm(x.float(), (dim,), eps=1e-5).type_as(x)
    ours = kernel.rms_norm(x, norm.weight, 1e-5)
    assert ours.dtype == torch.bfloat16 and ours.shape == x.shape
    assert (ours == ref).float().mean() >= 0.999
    assert ((ours.float() - ref.float()).abs() <= ref.float().abs() * 2**-7).all()
    assert kernels.bf16_step_kernels() is kernel and torch.equal(norm(x), ours)  # the module takes it for a step
    x[0, 0, 0] = float("nan")
    assert kernel.rms_norm(x, norm.weight, 1e-5)[0].isnan().all()  # a NaN in a row makes the row NaN, as torch


@pytest.mark.parametrize("shape", [(2, 16, 1, 128, 37), (1, 32, 1, 128, 390), (1, 8, 7, 64, 0), (2, 16, 3, 32, 100)])
def test_rope_gives_torch_s_bits_on_the_model_s_transposed_views(kernel, no_native_bf16, shape):
    """The products and their sums as torch's complex multiply rounds them, then one rounding to bf16: equal bits
    (measured on every case here), on q / k as the models make them, views of a projection's output."""
    B, H, T, E, start = shape
    rot = layers.rope_table(E, 10000.0, start + T)[start:]
    g = torch.Generator().manual_seed(start)
    x = (3 * torch.randn(B, T, H * E, generator=g)).to(torch.bfloat16).unflatten(-1, (H, E)).transpose(1, 2)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    ref = torch.view_as_real(pairs * rot).flatten(-2).type_as(x)
    ours = kernel.rope(x, rot)
    assert ours.is_contiguous() and torch.equal(ours, ref)
    assert kernels.bf16_step_kernels() is kernel and torch.equal(layers.apply_rope_interleaved(x, rot), ref)
