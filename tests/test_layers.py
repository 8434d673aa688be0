import pytest
import torch
import torch.nn.functional as F
from quality import compare

from speechrs import kernels, layers
from speechrs.dia.checkpoint import load_dia
from speechrs.kernels import cpu
from speechrs.layers import attend_one


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kv_heads", [4, 16])
@pytest.mark.parametrize("cache", ["float32", "same"])
def test_single_query_attention_equals_sdpa_in_float32(dtype, kv_heads, cache):
    """The decode-step attention (fp32 matmuls for bf16/fp16 queries over an fp32 cache, on a CPU with AMX
    torch's kernel over a cache in the query's dtype) against SDPA on the same inputs in float32, GQA included:
    within the output dtype's rounding."""
    g = torch.Generator().manual_seed(kv_heads)
    q = torch.randn(2, 16, 1, 64, generator=g)
    k, v = torch.randn(2, kv_heads, 77, 64, generator=g), torch.randn(2, kv_heads, 77, 64, generator=g)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.2, enable_gqa=kv_heads != 16)
    kv_dtype = torch.float32 if cache == "float32" else dtype
    k, v = k.to(dtype).to(kv_dtype), v.to(dtype).to(kv_dtype)  # the values a bf16 linear wrote, kept in kv_dtype
    ours = attend_one(q.to(dtype), k, v, scale=0.2)
    assert ours.dtype == dtype and ours.shape == ref.shape
    rounding = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(ours.float(), ref, atol=4 * rounding, rtol=4 * rounding)


_CACHED = (cpu.cpu_native_bf16, cpu.cpu_amx, kernels.bf16_step_kernels)


def _dia_logits(directory, monkeypatch, fp32_caches: bool) -> tuple[torch.Tensor, torch.dtype]:
    """Teacher-forced logits of the tiny Dia in bf16 over a prefill and 8 decode steps, and the caches' dtype: with
    fp32 caches (fp32 matmuls answer the decode queries) or the caches the environment's path keeps."""
    for cached in _CACHED:
        cached.cache_clear()
    with monkeypatch.context() as m:
        if fp32_caches:
            m.setenv("SPEECHRS_AMX", "0")
            m.setattr(layers, "bf16_step_kernels", lambda: None)
        model = load_dia(directory, torch.bfloat16)
        g = torch.Generator().manual_seed(0)
        text = torch.randint(3, 200, (1, 24), generator=g)
        codes = torch.randint(0, 1024, (2, 16, model.cfg.channels), generator=g)
        with torch.inference_mode():
            cross = model.cross_cache(model.encoder(torch.cat([text, torch.zeros_like(text)])))
            model.setup_caches(2, 32)
            out = [model.forward(codes[:, :8], 0, cross)]
            out += [model.forward(codes[:, t : t + 1], t, cross) for t in range(8, 16)]
    return torch.cat(out, dim=1), model.caches[0].k.dtype


@pytest.mark.parametrize("path", ["amx", "kernel"])
def test_bf16_caches_give_the_logits_of_fp32_caches(dia_dirs, monkeypatch, path):
    """SPEECHRS_AMX=1 (a CPU with AMX) keeps bf16 caches and answers decode queries with torch's bf16 kernel; a
    CPU without native bf16 (forced here on any CPU) keeps them bf16 for speechrs's kernel (csrc/decode.c);
    otherwise fp32 caches and fp32 matmuls. Teacher-forced over a prefill and 8 decode steps of the tiny Dia
    (bf16), self- and cross-attention, on the same linears, they differ by bf16 rounding only. Measured (AMX path):
    KL 1.8e-4, max difference 2^-7 of the logits' scale; speechrs's kernel path (attention and RMSNorm in C) gave
    the fp32 path's logits exactly (AVX2 and AMX CPUs). Bound at 2^-5, top-1 counted where the margin exceeds it
    (about 200 of 288 positions)."""
    if path == "amx":
        monkeypatch.setenv("SPEECHRS_AMX", "1")
    else:
        monkeypatch.setenv("SPEECHRS_NATIVE_BF16", "0")
        monkeypatch.setenv("SPEECHRS_AMX", "0")
        if not kernels.available():
            pytest.skip(f"speechrs's kernels cannot run here: {kernels.why_not()}")
    plain, plain_cache = _dia_logits(dia_dirs[1], monkeypatch, fp32_caches=True)
    bf16, bf16_cache = _dia_logits(dia_dirs[1], monkeypatch, fp32_caches=False)
    assert bf16_cache == torch.bfloat16 and plain_cache == torch.float32
    agreement = compare(plain, bf16, 2**-5 * plain.abs().max().item())
    assert agreement["max_diff"] <= 2**-5 and agreement["kl"] < 1e-3, agreement
    assert agreement["decided"] >= 100 and agreement["top1"] == 1.0, agreement
