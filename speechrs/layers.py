"""The models' shared building blocks: RoPE tables and rotation, RMSNorm, attention over a static KV cache, and a
request's rows and caches in a batched decoder forward.

Axes: B batch, T query positions, S key positions, H heads, K kv heads, E head dim.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechrs.kernels import bf16_step_kernels
from speechrs.kernels.cpu import cpu_amx, upcast_on_this_cpu
from speechrs.linear import routes


def step_kernels_for(x: torch.Tensor):
    """bf16_step_kernels() for a decode step's few bf16 CPU rows x (up to routes.STEP_KERNEL_ELEMENTS), else None."""
    if x.dtype != torch.bfloat16 or x.numel() > routes.STEP_KERNEL_ELEMENTS or x.device.type != "cpu":
        return None
    return bf16_step_kernels()


def cache_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype of attention caches (KV, Dia's cross K/V) for a model whose weights are `weight`'s dtype. bf16
    stays bf16 on a CPU with AMX, where torch's bf16 attention kernel is the faster one (cpu_amx), and on a CPU
    without native bf16 where speechrs's kernel reads it (bf16_step_kernels: half the bytes of fp32 to read per
    step, and half the memory). Elsewhere a bf16 / fp16 CPU cache is fp32, where a decode query is answered in fp32
    (attend_one) and converting the whole cache every step would cost more than holding it in fp32; any other,
    the weights' dtype. The values are the same either way: k and v come out of bf16 linears."""
    if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and (cpu_amx() or bf16_step_kernels()):
        return torch.bfloat16
    if weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return weight.dtype


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor:
    """F.scaled_dot_product_attention, in fp32 where this CPU would emulate bf16 (the encoder's 1500 x 1500
    attention and a prefill's are GEMMs too) or where k/v are kept in fp32 (cache_dtype), cast back to q's."""
    if upcast_on_this_cpu(q) or k.dtype != q.dtype:
        return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


def rope_table(head_dim: int, theta: float, max_len: int, device=None, min_timescale: float = 1.0) -> torch.Tensor:
    """Unit rotations e^(i * pos / timescale_j) of shape (max_len, head_dim/2), complex64, angles in float32 as
    Llama/Mistral compute them; timescale_j = min * (theta / min)^(2j / head_dim) (Dia's form; min is 1 elsewhere)."""
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (min_timescale * (theta / min_timescale) ** exponent)
    angles = torch.arange(max_len, dtype=torch.int64, device=device).float()[:, None] * inv_freq[None, :]
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope_interleaved(x: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (x[2i], x[2i+1]) as complex numbers: Mistral's native layout.

    x: (B, H, T, E); rot: (T, E/2) complex. One complex multiply instead of six real ops. A decode step's few bf16
    rows go through speechrs's kernel where it runs (bf16_step_kernels: one call for torch's six ops, torch's bits).
    """
    kernel = step_kernels_for(x)
    rows = x.dim() == 4 and x.stride(-1) == 1  # (B, H, T, E) with each row's pairs adjacent
    if kernel is not None and rows and rot.dtype == torch.complex64 and rot.is_contiguous():
        return kernel.rope(x, rot)
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, H, T, E/2)
    return torch.view_as_real(pairs * rot).flatten(-2).type_as(x)


def half_split_to_interleaved(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder q/k projection rows from half-split RoPE ([x1 | x2] rotated as pairs (x1_j, x2_j)) to interleaved
    pairs (x_2j, x_2j+1). Inverse of transformers' permute_for_rope."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, 2, out_dim // n_heads // 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def interleaved_to_half_split(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """transformers' permute_for_rope: interleaved pairs -> half-split rows."""
    out_dim, in_dim = w.shape
    return w.view(n_heads, out_dim // n_heads // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def checkpoint_embedding(num_embeddings: int, dim: int) -> nn.Embedding:
    """An nn.Embedding whose weight the checkpoint fills (built on the meta device like the rest of a model):
    without the random init, whose first normal_ on the meta device pulls in slow torch imports at every load
    (docs/performance.md, "Per-call and load costs")."""
    return nn.Embedding(num_embeddings, dim, _weight=torch.empty(num_embeddings, dim))


class KVCache(nn.Module):
    """Preallocated cache (B, K, max_len, E), written at explicit positions (gpt-fast style). A write past the
    end doubles it, so a request asking for a huge max_tokens costs memory only for what it generates."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype, device):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        # empty, not zeros: only what was written is ever read, and untouched pages cost no memory
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v (B, K, T, E) at [start, start+T) and return everything written so far: views of the cache,
        or at start 0 k/v themselves (the same values, in their own dtype: a prefill then attends in the model's
        dtype, not the cache's fp32, see cache_dtype)."""
        end = start + k.shape[2]
        if end > self.max_len:
            self._grow(max(end, 2 * self.max_len))
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        if start == 0:
            return k, v
        return self.k[:, :, :end], self.v[:, :, :end]

    def _grow(self, max_len: int) -> None:
        old = self.max_len
        for name in ("k", "v"):
            t = getattr(self, name)
            bigger = t.new_empty(t.shape[0], t.shape[1], max_len, t.shape[3])
            bigger[:, :, :old] = t
            setattr(self, name, bigger)


@dataclass(eq=False)
class RequestRows:
    """One request's rows in a batched decoder forward: the position of its first new token and its own caches
    (one KVCache per layer, batch = its rows). Requests at different positions share the linears of a step; each
    attends over its own cache with the same shapes as alone (engine/scheduler.py)."""

    start: int
    caches: list[KVCache]


def rows_per_request(x: torch.Tensor, requests: list[RequestRows]) -> int:
    """Rows of x (B, T, D) that each request owns, in order: B / len(requests), checked."""
    rows, rest = divmod(x.shape[0], len(requests))
    if rest or not rows:
        raise ValueError(f"{x.shape[0]} rows do not split evenly into {len(requests)} requests")
    return rows


def attend_one(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention of one query per row, q (B, H, 1, E), over all of k/v (B, K, S, E); K divides H (GQA).

    In bf16/fp16 on the CPU, torch's flash-attention kernel spends several times longer on a single query than two
    fp32 matmuls and a softmax (in fp32 it is as fast, so fp32 keeps it; docs/performance.md, "Attention of a
    decode query"). The scores and the sum run in fp32, as the kernel does; the grouped heads share their kv head
    without a copy (query head h reads kv head h // (H / K)). With k/v in q's dtype on a CPU with AMX (cache_dtype
    keeps them bf16 there) torch's kernel is used; elsewhere a bf16 k/v (a first step's own, not yet from the fp32
    cache) takes the fp32 matmuls as before. A bf16 cache on a CPU without native bf16 is read by speechrs's faster
    kernel (bf16_step_kernels), in fp32 sums likewise."""
    if q.dtype == torch.float32 or q.device.type != "cpu" or (k.dtype == q.dtype and cpu_amx()):
        return F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    B, H, _, E = q.shape
    kernel = bf16_step_kernels()
    if kernel is not None and kernel.attends(q, k, v):
        return kernel.attend_one(q, k, v, E**-0.5 if scale is None else scale)
    K = k.shape[1]
    scores = q.reshape(B, K, H // K, E).float() @ k.float().transpose(-1, -2)  # (B, K, H/K, S)
    weights = (scores * (E**-0.5 if scale is None else scale)).softmax(dim=-1)
    return (weights @ v.float()).to(q.dtype).reshape(B, H, 1, E)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: int, scale: float | None = None) -> torch.Tensor:
    """Causal attention of q (B, H, T, E) at positions [start, start+T) over k/v (B, K, S, E), S = start+T.

    K may divide H (GQA). A single query needs no mask; a prefill from 0 is plain causal.
    """
    n_q, n_k = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if n_q == 1:
        return attend_one(q, k, v, scale)
    if start == 0 and n_q == n_k:
        return sdpa(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    q_pos = torch.arange(start, start + n_q, device=q.device)[:, None]
    mask = torch.arange(n_k, device=q.device)[None, :] <= q_pos  # (T, S)
    return sdpa(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


class RMSNorm(nn.Module):
    """Computed in float32 and cast back before the gain, as Mistral and Llama do. A decode step's few bf16 rows
    go through speechrs's kernel where it runs (bf16_step_kernels: one call for torch's eight ops)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = step_kernels_for(x)
        if kernel is not None and self.weight.dtype == torch.bfloat16 and x.shape[-1] % 8 == 0:
            return kernel.rms_norm(x, self.weight, self.eps)
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).type_as(x)
