"""Both Voxtral layouts into one canonical model (native Mistral names).

Native: params.json + consolidated.safetensors. HF: config.json + model.safetensors or shards + index.
The HF table is the inverse of transformers' convert_voxtral_weights_to_hf.py STATE_DICT_MAPPING.
"""

import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from speechrs.layers import half_split_to_interleaved
from speechrs.linear.quant_store import check_all_stored, install_stored
from speechrs.voxtral.config import VoxtralConfig
from speechrs.voxtral.model import Voxtral
from speechrs.weights import checkpoint_files, load_into, read_safetensors, release_pages, release_unused, rename

_ENC = "mm_whisper_embeddings.whisper_encoder"

NATIVE_TO_CANONICAL = [
    (r"mm_whisper_embeddings\.tok_embeddings\.weight", "tok_embeddings.weight"),
    # Realtime-era files nest the conv under `.conv.`; the 3B stores it flat (vllm accepts both)
    (rf"{_ENC}\.conv_layers\.(\d)\.conv\.(weight|bias)", rf"{_ENC}.conv_layers.\1.\2"),
]

HF_TO_CANONICAL = [
    (r"language_model\.lm_head\.weight", "output.weight"),
    (r"language_model\.model\.norm\.weight", "norm.weight"),
    (r"language_model\.model\.embed_tokens\.weight", "tok_embeddings.weight"),
    (r"language_model\.model\.layers\.(\d+)\.input_layernorm\.weight", r"layers.\1.attention_norm.weight"),
    (r"language_model\.model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.ffn_norm.weight"),
    (r"language_model\.model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.weight", r"layers.\1.attention.w\2.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.gate_proj\.weight", r"layers.\1.feed_forward.w1.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.down_proj\.weight", r"layers.\1.feed_forward.w2.weight"),
    (r"language_model\.model\.layers\.(\d+)\.mlp\.up_proj\.weight", r"layers.\1.feed_forward.w3.weight"),
    (r"audio_tower\.conv1\.(weight|bias)", rf"{_ENC}.conv_layers.0.\1"),
    (r"audio_tower\.conv2\.(weight|bias)", rf"{_ENC}.conv_layers.1.\1"),
    (r"audio_tower\.embed_positions\.weight", None),  # fixed sinusoids, recomputed by prepare()
    (r"audio_tower\.layer_norm\.(weight|bias)", rf"{_ENC}.transformer.norm.\1"),
    (
        r"audio_tower\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)",
        rf"{_ENC}.transformer.layers.\1.attention.w\2.\3",
    ),
    (
        r"audio_tower\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)",
        rf"{_ENC}.transformer.layers.\1.attention.wo.\2",
    ),
    (
        r"audio_tower\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)",
        rf"{_ENC}.transformer.layers.\1.attention_norm.\2",
    ),
    (r"audio_tower\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", rf"{_ENC}.transformer.layers.\1.ffn_norm.\2"),
    (r"audio_tower\.layers\.(\d+)\.fc([12])\.(weight|bias)", rf"{_ENC}.transformer.layers.\1.feed_forward.w\2.\3"),
    (r"multi_modal_projector\.linear_1\.weight", "mm_whisper_embeddings.audio_language_projection.0.weight"),
    (r"multi_modal_projector\.linear_2\.weight", "mm_whisper_embeddings.audio_language_projection.2.weight"),
]


def _native_tensors(directory: Path, mappings: list):
    for path in checkpoint_files(directory, "consolidated.safetensors", "consolidated.safetensors.index.json"):
        for name, t in read_safetensors(path, mappings):
            yield rename(name, NATIVE_TO_CANONICAL), t


def _hf_tensors(directory: Path, cfg: VoxtralConfig, mappings: list):
    for path in checkpoint_files(directory, "model.safetensors", "model.safetensors.index.json"):
        for name, t in read_safetensors(path, mappings):
            new = rename(name, HF_TO_CANONICAL)
            if new is None:
                continue
            if new.endswith("attention.wq.weight") and not new.startswith("mm_"):
                t = half_split_to_interleaved(t, cfg.n_heads)
            elif new.endswith("attention.wk.weight") and not new.startswith("mm_"):
                t = half_split_to_interleaved(t, cfg.n_kv_heads)
            yield new, t


def canonical_tensors(directory: Path, layout: str, mappings: list) -> tuple[VoxtralConfig, Iterator]:
    """The config and the checkpoint's tensors under canonical names, in either layout."""
    if layout == "native":
        return VoxtralConfig.from_params_json(directory / "params.json"), _native_tensors(directory, mappings)
    cfg = VoxtralConfig.from_hf_config(directory / "config.json")
    return cfg, _hf_tensors(directory, cfg, mappings)


def load_voxtral(
    directory: Path, layout: str, dtype: torch.dtype | None, device="cpu", quantize: str | None = None
) -> Voxtral:
    """Build on the meta device, assign the checkpoint's tensors, then derive the fixed buffers (and quantize the
    decoder's linears, layer by layer, or take a `speechrs quantize` directory's codes)."""
    mappings: list = []
    cfg, tensors = canonical_tensors(directory, layout, mappings)  # a generator: nothing is read yet
    with torch.device("meta"):
        model = Voxtral(cfg)
    stored = install_stored(model, directory, Voxtral.quantized_kind, mappings, quantize)  # `speechrs quantize`'s
    if stored is not None:
        tensors, quantize = stored.tensors, stored.kind
    load_into(model, tensors, dtype, device, keep_dtype=stored.keep_dtype if stored else None)
    # pages of permuted / fused / packed / cast originals, layer by layer: the peak stays ~1x the weights
    release = functools.partial(release_pages, mappings)  # a weight quantized a part at a time, as it goes
    model.prepare(after_layer=lambda: release_unused(mappings, model), quantize=quantize, release=release)
    release_unused(mappings, model)
    if stored is not None:
        check_all_stored(model, directory, stored, Voxtral.quantized_kind, int8_stored_since=2)
    return model.eval()
