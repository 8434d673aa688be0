"""Dia-1.6B in pure torch: byte-text encoder, 9-channel audio-code decoder with cross-attention.

Axes: B batch (2 rows for CFG), T decoder steps, S text positions, C channels, V codes, D dim,
H heads, K kv heads, E head dim. Parameter names are transformers' (DiaForConditionalGeneration) without
the `model.` prefix; Linear weights are (out, in). Attention softmax scale is 1, as in every reference.
Dia's RoPE rotates half-split pairs; the loader reorders every q/k projection's rows to interleaved pairs
(checkpoint.py), so one complex multiply rotates them: q.k is unchanged when q and k share a permutation.
"""

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from speechrs.dia.config import DiaConfig
from speechrs.layers import (
    KVCache,
    RequestRows,
    RMSNorm,
    apply_rope_interleaved,
    attend,
    attend_one,
    cache_dtype,
    checkpoint_embedding,
    rope_table,
    rows_per_request,
    sdpa,
)
from speechrs.linear.base import ProbedBatching
from speechrs.linear.prepare import Linears, prepare_linears


def _rope(head_dim: int, cfg: DiaConfig, length: int, device) -> torch.Tensor:
    return rope_table(head_dim, cfg.rope_max_timescale, length, device, cfg.rope_min_timescale)


class Attention(nn.Module):
    def __init__(self, q_dim: int, kv_dim: int, n_heads: int, n_kv_heads: int, head_dim: int, out_dim: int):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(q_dim, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(kv_dim, n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(kv_dim, n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * head_dim, out_dim, bias=False)
        self.qkv = None  # [q; k; v] for self-attention, one Linear made by Dia.prepare()

    def heads(self, proj: nn.Linear, x: torch.Tensor, n: int) -> torch.Tensor:
        return proj(x).unflatten(-1, (n, self.head_dim)).transpose(1, 2)  # (B, n, T, E)

    def self_qkv(self, x: torch.Tensor):
        """q, k (not yet rotated) and v, each (B, heads, T, E), from one fused matmul."""
        H, K, E = self.n_heads, self.n_kv_heads, self.head_dim
        q, k, v = (
            t.unflatten(-1, (n, E)).transpose(1, 2)
            for t, n in zip(self.qkv(x).split([H * E, K * E, K * E], dim=-1), (H, K, K), strict=True)
        )
        return q, k, v

    def out(self, o_BxHxTxE: torch.Tensor) -> torch.Tensor:
        return self.o_proj(o_BxHxTxE.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up_proj = nn.Linear(dim, 2 * hidden, bias=False)  # rows [gate; up] (nari wi_fused[:, 0/1])
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.pre_sa_norm = RMSNorm(cfg.enc_dim, cfg.norm_eps)
        self.self_attention = Attention(
            cfg.enc_dim, cfg.enc_dim, cfg.enc_heads, cfg.enc_kv_heads, cfg.enc_head_dim, cfg.enc_dim
        )
        self.post_sa_norm = RMSNorm(cfg.enc_dim, cfg.norm_eps)
        self.mlp = MLP(cfg.enc_dim, cfg.enc_hidden)

    def forward(self, x, rot):
        a = self.self_attention
        q, k, v = a.self_qkv(self.pre_sa_norm(x))
        q, k = apply_rope_interleaved(q, rot), apply_rope_interleaved(k, rot)
        o = sdpa(q, k, v, scale=1.0, enable_gqa=a.n_heads != a.n_kv_heads)
        x = x + a.out(o)
        return x + self.mlp(self.post_sa_norm(x))


class Encoder(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = checkpoint_embedding(cfg.text_vocab, cfg.enc_dim)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.enc_layers))
        self.norm = RMSNorm(cfg.enc_dim, cfg.norm_eps)

    def forward(self, text_BxS: torch.Tensor) -> torch.Tensor:
        """Byte ids (B, S) -> (B, S, D_enc). The text is not padded to text_length, so no mask is needed: the
        references' padding masks make non-pad positions see exactly these keys."""
        cfg = self.cfg
        rot = _rope(cfg.enc_head_dim, cfg, text_BxS.shape[1], text_BxS.device)
        x = self.embedding(text_BxS)
        for layer in self.layers:
            x = layer(x, rot)
        return self.norm(x)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.pre_sa_norm = RMSNorm(cfg.dec_dim, cfg.norm_eps)
        self.self_attention = Attention(
            cfg.dec_dim, cfg.dec_dim, cfg.dec_heads, cfg.dec_kv_heads, cfg.dec_head_dim, cfg.dec_dim
        )
        self.pre_ca_norm = RMSNorm(cfg.dec_dim, cfg.norm_eps)
        self.cross_attention = Attention(
            cfg.dec_dim, cfg.enc_dim, cfg.cross_heads, cfg.cross_kv_heads, cfg.cross_head_dim, cfg.dec_dim
        )
        self.pre_mlp_norm = RMSNorm(cfg.dec_dim, cfg.norm_eps)
        self.mlp = MLP(cfg.dec_dim, cfg.dec_hidden)


class Decoder(nn.Module):
    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = MultiChannelEmbedding(cfg)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.norm = RMSNorm(cfg.dec_dim, cfg.norm_eps)


class MultiChannelEmbedding(nn.Module):
    """One table of C * V rows; channel c's code v is row c * V + v; the C embeddings are summed."""

    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.embed = checkpoint_embedding(cfg.audio_vocab * cfg.channels, cfg.dec_dim)
        self.vocab = cfg.audio_vocab

    def forward(self, codes_BxTxC: torch.Tensor) -> torch.Tensor:
        offsets = torch.arange(codes_BxTxC.shape[-1], device=codes_BxTxC.device) * self.vocab
        return self.embed(codes_BxTxC + offsets).sum(dim=2)  # (B, T, D)


class CrossCache:
    """Cross-attention K/V of every decoder layer, computed once per request from the encoder output: k[i], v[i]
    (B, K, S, E). With `uncond` (Dia.text_cache), the rows are a CFG pair [text, all zero bytes] whose K/V hold the
    text's row only, and uncond[i] (1, H, 1, E) is the zero row's cross-attention output at layer i, whatever the
    query (Dia.unconditional_values)."""

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], uncond: list[torch.Tensor] | None = None):
        self.k, self.v, self.uncond = k, v, uncond


@dataclass(eq=False)
class DiaRequestRows(RequestRows):
    """One request's rows (its CFG pair) in a batched decoder forward, with its text's cross-attention K/V."""

    cross: CrossCache | None = None


class Dia(ProbedBatching, nn.Module):
    # the Linears prepare() quantizes (canonical names, before fusing): what `speechrs quantize` stores as codes
    QUANTIZED = re.compile(
        r"decoder\.layers\.\d+\.((self|cross)_attention\.[qkvo]_proj|mlp\.(gate_up|down)_proj)|logits_dense"
    )

    # ...and those it quantizes to int8 whatever was asked: the text encoder's, which run once per request on the
    # text's rows (int4 would gain no speed there, only error); in int8 they take half the memory of bf16
    # (qkv: their fusion, as a directory written before format 3 quantizes it at load)
    QUANTIZED_INT8 = re.compile(r"encoder\.layers\.\d+\.(self_attention\.([qkvo]_proj|qkv)|mlp\.(gate_up|down)_proj)")
    ALWAYS_INT8 = "the text encoder"  # QUANTIZED_INT8, in the load line

    @classmethod
    def quantized_kind(cls, name: str, kind: str) -> str | None:
        """What `name` (a Linear's canonical name, before fusing) is quantized to when `kind` is asked; None if
        it stays float."""
        if cls.QUANTIZED_INT8.fullmatch(name):
            return "int8"
        return kind if cls.QUANTIZED.fullmatch(name) else None

    def __init__(self, cfg: DiaConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.logits_dense = nn.Linear(cfg.dec_dim, cfg.channels * cfg.audio_vocab, bias=False)
        self.caches: list[KVCache] = []
        self._rope = torch.zeros(0)
        self._uncond: list[torch.Tensor] | None = None  # unconditional_values(), made once the weights are final

    def prepare(self, after_layer=lambda: None, quantize: str | None = None, release=None) -> None:
        """Call once the weights are real (after loading): the Linears made what this machine runs
        (linear/prepare.py: the decoder's and the logits head `quantize`d, the text encoder's int8 with it; else
        packed or fused), then the batching probe."""
        encoder = [  # QUANTIZED_INT8
            [
                Linears(layer.self_attention, fused={"qkv": ["q_proj", "k_proj", "v_proj"]}, alone=["o_proj"]),
                Linears(layer.mlp, alone=["gate_up_proj", "down_proj"]),
            ]
            for layer in self.encoder.layers
        ]
        decoder = [  # QUANTIZED; cross-attention's k/v run once per request, on the text: not packed
            [
                Linears(layer.self_attention, fused={"qkv": ["q_proj", "k_proj", "v_proj"]}, alone=["o_proj"]),
                Linears(
                    layer.cross_attention, alone=["q_proj", "k_proj", "v_proj", "o_proj"], unpacked=("k_proj", "v_proj")
                ),
                Linears(layer.mlp, alone=["gate_up_proj", "down_proj"]),
            ]
            for layer in self.decoder.layers
        ]
        prepare_linears(
            self, encoder, decoder, "logits_dense", quantize, self.decoder.embeddings.embed.weight, after_layer, release
        )
        first, p = self.decoder.layers[0], self.decoder.embeddings.embed.weight
        a, c = first.self_attention, first.cross_attention
        linears = [a.qkv, a.o_proj, c.q_proj, c.o_proj, first.mlp.gate_up_proj, first.mlp.down_proj]
        self.probe_batching([*linears, self.logits_dense], 2, p.dtype, p.device)  # a CFG pair

    def new_caches(self, batch: int, max_len: int) -> list[KVCache]:
        """One request's self-attention cache, a KVCache per decoder layer for `batch` rows (2: the CFG pair) and
        max_len steps; the RoPE table is made long enough too."""
        p, cfg = self.decoder.embeddings.embed.weight, self.cfg
        if self._rope.shape[0] < max_len:
            self._rope = _rope(cfg.dec_head_dim, cfg, max(max_len, cfg.audio_length + 1), p.device)
        return [
            KVCache(batch, cfg.dec_kv_heads, max_len, cfg.dec_head_dim, cache_dtype(p), p.device)
            for _ in self.decoder.layers
        ]

    def setup_caches(self, batch: int, max_len: int) -> None:
        """The model's own cache, for `forward` (tests, benchmarks): pipelines hold one per request instead."""
        self.caches = self.new_caches(batch, max_len)

    def cross_cache(self, enc_BxSxD: torch.Tensor) -> CrossCache:
        cfg, ks, vs = self.cfg, [], []
        if cfg.cross_rope:  # v0.1: keys rotated once at encoder positions 0..S-1
            rot = _rope(cfg.cross_head_dim, cfg, enc_BxSxD.shape[1], enc_BxSxD.device)
        for layer in self.decoder.layers:
            a = layer.cross_attention
            k = a.heads(a.k_proj, enc_BxSxD, a.n_kv_heads)
            k = apply_rope_interleaved(k, rot) if cfg.cross_rope else k
            # contiguous in cache_dtype: every decode step reads them whole, and a strided view would cost a gather
            # copy per step (docs/architecture.md); `to` alone keeps the view when the dtype already matches
            dtype = cache_dtype(enc_BxSxD)
            ks.append(k.to(dtype).contiguous())
            vs.append(a.heads(a.v_proj, enc_BxSxD, a.n_kv_heads).to(dtype).contiguous())
        return CrossCache(ks, vs)

    def text_cache(self, text_1xS: torch.Tensor) -> CrossCache:
        """The cross-attention cache of a CFG pair, rows [text, the unconditional all-zero text of the same
        length], as cross_cache(encoder(both rows)) computes it up to rounding, for half its work: the zero row
        needs neither the encoder nor K/V of its own (unconditional_values)."""
        cache = self.cross_cache(self.encoder(text_1xS))
        cache.uncond = self.unconditional_values()
        return cache

    def unconditional_values(self) -> list[torch.Tensor]:
        """Per decoder layer, the cross-attention output (1, H, 1, E) of an all-zero text, any length, any query.

        Zero bytes embed every position alike and attention over identical values returns that value (its weights
        sum to 1), so the encoder keeps the positions identical and every cross-attention value is one vector; RoPE
        never rotates values. One position gives it exactly, the references' sums over S positions to rounding;
        computed once, as the weights do not change after prepare()."""
        if self._uncond is None:
            p = self.decoder.embeddings.embed.weight
            with torch.no_grad():  # in the caller's mode (inference tensors inside its inference_mode), no autograd
                enc = self.encoder(torch.zeros(1, 1, dtype=torch.long, device=p.device))
                values = []
                for layer in self.decoder.layers:
                    a = layer.cross_attention
                    v = a.heads(a.v_proj, enc, a.n_kv_heads)  # (1, K, 1, E)
                    values.append(v.repeat_interleave(a.n_heads // a.n_kv_heads, dim=1))  # head h reads h // (H/K)
            self._uncond = values
        return self._uncond

    def forward(self, codes_BxTxC: torch.Tensor, start: int, cross: CrossCache) -> torch.Tensor:
        """Delayed code rows at steps [start, start+T) with the model's own cache (setup_caches) -> logits
        (B, T, C, V) in float32."""
        return self.forward_rows(codes_BxTxC, [DiaRequestRows(start, self.caches, cross)])

    def forward_rows(self, codes_BxTxC: torch.Tensor, segments: list[DiaRequestRows]) -> torch.Tensor:
        """The decoder over several requests at once: the rows split evenly between `segments` in order (a CFG
        pair each), each at its own steps [start, start+T) with its own caches and text -> logits (B, T, C, V)."""
        cfg, T = self.cfg, codes_BxTxC.shape[1]
        n = rows_per_request(codes_BxTxC, segments)
        if n != 2 and any(s.cross is not None and s.cross.uncond is not None for s in segments):
            raise ValueError("a text_cache is for a CFG pair: 2 rows per request")
        if len(segments) > 1 and not self.batch_invariant:  # these kernels would change a request's bits: one each
            return torch.cat([self.forward_rows(codes_BxTxC[i * n : (i + 1) * n], [s]) for i, s in enumerate(segments)])
        rots = [self._rope[s.start : s.start + T] for s in segments]
        crosses = [s.cross for s in segments]
        if any(c is None for c in crosses):
            raise ValueError("every Dia segment needs its cross-attention cache")
        x = self.decoder.embeddings(codes_BxTxC)
        for i, layer in enumerate(self.decoder.layers):
            a, c = layer.self_attention, layer.cross_attention
            q, k, v = a.self_qkv(layer.pre_sa_norm(x))  # one matmul for every request's rows, not yet rotated
            outs = []
            for j, (s, rot) in enumerate(zip(segments, rots, strict=True)):  # each request as alone
                rows = slice(j * n, (j + 1) * n)
                ks, vs = s.caches[i].update(s.start, apply_rope_interleaved(k[rows], rot), v[rows])
                outs.append(attend(apply_rope_interleaved(q[rows], rot), ks, vs, s.start, scale=1.0))
            x = x + a.out(outs[0] if len(outs) == 1 else torch.cat(outs))
            cq = c.heads(c.q_proj, layer.pre_ca_norm(x), c.n_heads)
            outs = []
            for j, (cross, rot) in enumerate(zip(crosses, rots, strict=True)):
                rows = slice(j * n, (j + 1) * n)
                uncond = cross.uncond  # a CFG pair: only the text's row attends
                q = cq[j * n : j * n + 1] if uncond is not None else cq[rows]
                qj = apply_rope_interleaved(q, rot) if cfg.cross_rope else q  # v0.1: at the step
                ck, cv = cross.k[i], cross.v[i]
                if T == 1:
                    o = attend_one(qj, ck, cv, scale=1.0)
                else:
                    o = sdpa(qj, ck, cv, scale=1.0, enable_gqa=c.n_heads != c.n_kv_heads)
                outs.append(o if uncond is None else torch.cat([o, uncond[i].expand(1, -1, T, -1).to(o.dtype)]))
            x = x + c.out(outs[0] if len(outs) == 1 else torch.cat(outs))
            x = x + layer.mlp(layer.pre_mlp_norm(x))
        logits = self.logits_dense(self.decoder.norm(x))
        return logits.unflatten(-1, (cfg.channels, cfg.audio_vocab)).float()
