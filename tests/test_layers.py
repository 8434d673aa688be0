import pytest
import torch
import torch.nn.functional as F

from speechrs.layers import attend_one


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("kv_heads", [4, 16])
def test_single_query_attention_equals_sdpa_in_float32(dtype, kv_heads):
    """The decode-step attention (a matmul path in bf16/fp16, SDPA in fp32) against SDPA on the same inputs in
    float32, GQA included: within the output dtype's rounding."""
    g = torch.Generator().manual_seed(kv_heads)
    q = torch.randn(2, 16, 1, 64, generator=g)
    k, v = torch.randn(2, kv_heads, 77, 64, generator=g), torch.randn(2, kv_heads, 77, 64, generator=g)
    ref = F.scaled_dot_product_attention(q, k, v, scale=0.2, enable_gqa=kv_heads != 16)
    ours = attend_one(q.to(dtype), k.to(dtype), v.to(dtype), scale=0.2)
    assert ours.dtype == dtype and ours.shape == ref.shape
    rounding = {torch.bfloat16: 2**-7, torch.float16: 2**-10, torch.float32: 1e-6}[dtype]
    torch.testing.assert_close(ours.float(), ref, atol=4 * rounding, rtol=4 * rounding)
