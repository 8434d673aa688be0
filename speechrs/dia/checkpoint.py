"""Both Dia weight layouts into one canonical model (transformers' names without `model.`).

nari (nari-labs/Dia-1.6B, v0.1): JAX DenseGeneral kernels [in..., out...] -> flatten, transpose; nine
`decoder.embeddings.{c}` tables -> one concatenated table; `decoder.logits_dense` -> `logits_dense`;
`mlp.wi_fused` / `mlp.wo` -> `gate_up_proj` / `down_proj`. The inverse of transformers' convert_dia_to_hf.py.
HF (DiaForConditionalGeneration): strip the `model.` prefix.
"""

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import torch

from speechrs.dia.config import DiaConfig
from speechrs.dia.model import Dia
from speechrs.errors import UnsupportedModelError
from speechrs.layers import half_split_to_interleaved
from speechrs.linear.quant_store import check_all_stored, install_stored
from speechrs.weights import checkpoint_files, load_into, read_safetensors, release_unused, rename, tensor_names

NARI_TO_CANONICAL = [
    (r"decoder\.logits_dense\.weight", "logits_dense.weight"),
    (r"(.*)\.mlp\.wi_fused\.weight", r"\1.mlp.gate_up_proj.weight"),
    (r"(.*)\.mlp\.wo\.weight", r"\1.mlp.down_proj.weight"),
]
_EMBED = re.compile(r"decoder\.embeddings\.(\d+)\.weight")


def dense_general_to_linear(name: str, t: torch.Tensor) -> torch.Tensor:
    """A DenseGeneral kernel [in..., out...] as a Linear weight (out, in). o_proj's inputs are (H, E)."""
    if t.ndim < 2 or not name.endswith(("_proj.weight", "logits_dense.weight")):
        return t
    if name.endswith("o_proj.weight"):
        return t.reshape(-1, t.shape[-1]).T.contiguous()
    return t.reshape(t.shape[0], -1).T.contiguous()


def _nari_tensors(directory: Path, mappings: list):
    embeddings: dict[int, torch.Tensor] = {}
    for path in checkpoint_files(directory, "model.safetensors", "model.safetensors.index.json"):
        for name, t in read_safetensors(path, mappings):
            if m := _EMBED.fullmatch(name):
                embeddings[int(m.group(1))] = t
                continue
            new = rename(name, NARI_TO_CANONICAL)
            if new is None:
                raise UnsupportedModelError(f"{path}: unexpected nari tensor {name}")
            yield new, dense_general_to_linear(new, t)
    if embeddings:  # nari's C separate tables are transformers' one table with offsets c * V
        yield "decoder.embeddings.embed.weight", torch.cat([embeddings[c] for c in sorted(embeddings)])


def _hf_tensors(directory: Path, mappings: list):
    for path in checkpoint_files(directory, "model.safetensors", "model.safetensors.index.json"):
        for name, t in read_safetensors(path, mappings):
            yield name.removeprefix("model."), t


def weight_naming(directory: Path) -> str:
    """ "nari" or "hf", told from the tensor names (the config schema does not imply the weight names)."""
    files = checkpoint_files(directory, "model.safetensors", "model.safetensors.index.json")
    names = {n for f in files for n in tensor_names(f)}
    if "decoder.embeddings.0.weight" in names:
        return "nari"
    if "logits_dense.weight" in names or any(n.startswith("model.") for n in names):
        return "hf"
    raise UnsupportedModelError(
        f"{directory}: tensor names are neither nari's nor transformers' Dia names, e.g. {sorted(names)[:3]}"
    )


def canonical_tensors(directory: Path, cfg: DiaConfig, mappings: list) -> Iterator[tuple[str, torch.Tensor]]:
    """The checkpoint's tensors under canonical names (and RoPE rows interleaved), in either naming."""
    read = _nari_tensors if weight_naming(directory) == "nari" else _hf_tensors
    return ((name, _interleave_qk(name, t, cfg)) for name, t in read(directory, mappings))


def load_dia(
    directory: Path, dtype: torch.dtype | None, device="cpu", generation: str | None = None, quantize: str | None = None
) -> Dia:
    """The config decides the semantics (`generation` overrides it, for tests); the tensor names the mapping.
    `quantize` (int8 / int4) quantizes the decoder's linears and the logits head, layer by layer (a `speechrs
    quantize` directory's codes are taken as they are)."""
    cfg = DiaConfig.load(directory / "config.json")
    if generation is not None:
        cfg = dataclasses.replace(cfg, generation=generation)
    mappings: list = []
    with torch.device("meta"):
        model = Dia(cfg)
    stored = install_stored(model, directory, Dia.quantized_kind, mappings, quantize)  # `speechrs quantize`'s
    if stored is not None:
        quantize = stored.kind
    tensors = stored.tensors if stored is not None else canonical_tensors(directory, cfg, mappings)
    load_into(model, tensors, dtype, device, keep_dtype=stored.keep_dtype if stored else None)
    # pages of transposed / interleaved / fused / packed originals, layer by layer: the peak stays ~1x the weights
    model.prepare(after_layer=lambda: release_unused(mappings, model), quantize=quantize)
    release_unused(mappings, model)
    if stored is not None:
        check_all_stored(model, directory, stored, Dia.quantized_kind, int8_stored_since=3)
    return model.eval()


_QK = re.compile(r"(encoder|decoder)\.layers\.\d+\.(self_attention|cross_attention)\.([qk])_proj\.weight")


def _interleave_qk(name: str, t: torch.Tensor, cfg: DiaConfig) -> torch.Tensor:
    """Half-split RoPE rows -> interleaved, for model.py's complex rotation (dot products are unchanged)."""
    m = _QK.fullmatch(name)
    if m is None:
        return t
    part, attn, qk = m.groups()
    if part == "encoder":
        heads = cfg.enc_heads if qk == "q" else cfg.enc_kv_heads
    elif attn == "self_attention":
        heads = cfg.dec_heads if qk == "q" else cfg.dec_kv_heads
    else:
        heads = cfg.cross_heads if qk == "q" else cfg.cross_kv_heads
    return half_split_to_interleaved(t, heads)
