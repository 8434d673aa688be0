"""Tiny seeded random checkpoints in the real on-disk layouts (docs/testing.md). Run: python tests/tiny.py OUT

Each tensor comes from its own generator seeded by its name, so files do not depend on write order.
Voxtral: native (params.json, consolidated.safetensors, tekken.json) and HF (config.json, 2 shards + index,
tekken.json), the same weights in both, HF q/k permuted as transformers' converter does.
"""

import json
import sys
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speechrs.layers import interleaved_to_half_split as permute_rope  # noqa: E402
from speechrs.voxtral.model import sinusoids  # noqa: E402

# ranks of the Voxtral v7 tekken's special tokens (as mistral-common's tests/test_tekken.py::get_special_tokens)
VOXTRAL_SPECIALS = {
    "<unk>": 0,
    "<s>": 1,
    "</s>": 2,
    "[INST]": 3,
    "[/INST]": 4,
    "[AVAILABLE_TOOLS]": 5,
    "[/AVAILABLE_TOOLS]": 6,
    "[TOOL_RESULTS]": 7,
    "[/TOOL_RESULTS]": 8,
    "[TOOL_CALLS]": 9,
    "[IMG]": 10,
    "<pad>": 11,
    "[IMG_BREAK]": 12,
    "[IMG_END]": 13,
    "[PREFIX]": 14,
    "[MIDDLE]": 15,
    "[SUFFIX]": 16,
    "[SYSTEM_PROMPT]": 17,
    "[/SYSTEM_PROMPT]": 18,
    "[TOOL_CONTENT]": 19,
    "[AUDIO]": 24,
    "[BEGIN_AUDIO]": 25,
    "[TRANSCRIBE]": 34,
    "[NEXT_AUDIO_TEXT]": 35,
    "[REPEAT_AUDIO_TEXT]": 36,
}

TINY_VOXTRAL = {
    "dim": 128,
    "n_layers": 2,
    "head_dim": 32,
    "hidden_dim": 256,
    "n_heads": 4,
    "n_kv_heads": 2,
    "rope_theta": 1e8,
    "norm_eps": 1e-5,
    "vocab_size": 131072,
    "max_seq_len": 131072,
    "multimodal": {
        "whisper_model_args": {
            "encoder_args": {
                "audio_encoding_args": {
                    "sampling_rate": 16000,
                    "num_mel_bins": 128,
                    "hop_length": 160,
                    "window_size": 400,
                },
                "dim": 64,
                "n_layers": 2,
                "head_dim": 16,
                "hidden_dim": 256,
                "n_heads": 4,
                "vocab_size": 51866,
                "max_source_positions": 1500,
            },
            "downsample_args": {"downsample_factor": 4},
        }
    },
}


def _gen(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()) + seed)


def _tensor(name: str, shape: tuple, kind: str, seed: int, fan_in: int = 1) -> torch.Tensor:
    g = _gen(name, seed)
    z = torch.randn(shape, generator=g)
    if kind == "linear":
        return z / fan_in**0.5
    if kind == "head":
        return 3 * z / fan_in**0.5
    if kind == "embed":
        return z
    if kind == "gain":
        return 1 + 0.1 * z
    if kind == "bias":
        return 0.02 * z
    raise ValueError(kind)


def voxtral_native_state(params: dict, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """Canonical (native) tensors for a params.json, drawn in float32 and stored in dtype one by one
    (a full-size model never exists in float32 at once)."""
    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    ds = params["multimodal"]["whisper_model_args"]["downsample_args"]["downsample_factor"]
    d, hd, nh, nkv, ffn, V = (
        params[k] for k in ("dim", "head_dim", "n_heads", "n_kv_heads", "hidden_dim", "vocab_size")
    )
    ed, ehd, enh, effn, mels = enc["dim"], enc["head_dim"], enc["n_heads"], enc["hidden_dim"], 128
    sd: dict[str, tuple] = {}
    E = "mm_whisper_embeddings.whisper_encoder"
    sd[f"{E}.conv_layers.0.weight"] = ((ed, mels, 3), "linear", mels * 3)
    sd[f"{E}.conv_layers.0.bias"] = ((ed,), "bias")
    sd[f"{E}.conv_layers.1.weight"] = ((ed, ed, 3), "linear", ed * 3)
    sd[f"{E}.conv_layers.1.bias"] = ((ed,), "bias")
    for i in range(enc["n_layers"]):
        p = f"{E}.transformer.layers.{i}"
        for w in ("wq", "wk", "wv"):
            sd[f"{p}.attention.{w}.weight"] = ((enh * ehd, ed), "linear", ed)
        sd[f"{p}.attention.wq.bias"] = ((enh * ehd,), "bias")
        sd[f"{p}.attention.wv.bias"] = ((enh * ehd,), "bias")
        sd[f"{p}.attention.wo.weight"] = ((ed, enh * ehd), "linear", enh * ehd)
        sd[f"{p}.attention.wo.bias"] = ((ed,), "bias")
        for n in ("attention_norm", "ffn_norm"):
            sd[f"{p}.{n}.weight"] = ((ed,), "gain")
            sd[f"{p}.{n}.bias"] = ((ed,), "bias")
        sd[f"{p}.feed_forward.w1.weight"] = ((effn, ed), "linear", ed)
        sd[f"{p}.feed_forward.w1.bias"] = ((effn,), "bias")
        sd[f"{p}.feed_forward.w2.weight"] = ((ed, effn), "linear", effn)
        sd[f"{p}.feed_forward.w2.bias"] = ((ed,), "bias")
    sd[f"{E}.transformer.norm.weight"] = ((ed,), "gain")
    sd[f"{E}.transformer.norm.bias"] = ((ed,), "bias")
    sd["mm_whisper_embeddings.audio_language_projection.0.weight"] = ((d, ed * ds), "linear", ed * ds)
    sd["mm_whisper_embeddings.audio_language_projection.2.weight"] = ((d, d), "linear", d)
    sd["mm_whisper_embeddings.tok_embeddings.weight"] = ((V, d), "embed")
    for i in range(params["n_layers"]):
        p = f"layers.{i}"
        sd[f"{p}.attention.wq.weight"] = ((nh * hd, d), "linear", d)
        sd[f"{p}.attention.wk.weight"] = ((nkv * hd, d), "linear", d)
        sd[f"{p}.attention.wv.weight"] = ((nkv * hd, d), "linear", d)
        sd[f"{p}.attention.wo.weight"] = ((d, nh * hd), "linear", nh * hd)
        sd[f"{p}.attention_norm.weight"] = ((d,), "gain")
        sd[f"{p}.ffn_norm.weight"] = ((d,), "gain")
        sd[f"{p}.feed_forward.w1.weight"] = ((ffn, d), "linear", d)
        sd[f"{p}.feed_forward.w3.weight"] = ((ffn, d), "linear", d)
        sd[f"{p}.feed_forward.w2.weight"] = ((d, ffn), "linear", ffn)
    sd["norm.weight"] = ((d,), "gain")
    sd["output.weight"] = ((V, d), "head", d)
    return {name: _tensor(name, spec[0], spec[1], seed, *spec[2:]).to(dtype).contiguous() for name, spec in sd.items()}


def write_tekken(path: Path) -> None:
    """A Voxtral-style v7 tekken.json built from mistral_common's shipped tekken_240911.json."""
    import mistral_common

    src = json.loads((Path(mistral_common.__file__).parent / "data" / "tekken_240911.json").read_text())
    by_rank = {r: n for n, r in VOXTRAL_SPECIALS.items()}
    n_special = src["config"]["default_num_special_tokens"]
    tekken = {
        "config": {**src["config"], "version": "v7"},
        "vocab": src["vocab"],
        "special_tokens": [
            {"rank": i, "token_str": by_rank.get(i, f"<SPECIAL_{i}>"), "is_control": True} for i in range(n_special)
        ],
        "audio": {
            "sampling_rate": 16000,
            "frame_rate": 12.5,
            "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400},
            "chunk_length_s": 30.0,
        },
    }
    path.write_text(json.dumps(tekken))


def hf_voxtral_config(params: dict) -> dict:
    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    return {
        "architectures": ["VoxtralForConditionalGeneration"],
        "model_type": "voxtral",
        "audio_token_id": 24,
        "projector_hidden_act": "gelu",
        "hidden_size": params["dim"],
        "vocab_size": params["vocab_size"],
        "torch_dtype": "float32",
        "audio_config": {
            "model_type": "voxtral_encoder",
            "activation_function": "gelu",
            "head_dim": enc["head_dim"],
            "hidden_size": enc["dim"],
            "intermediate_size": enc["hidden_dim"],
            "max_source_positions": enc["max_source_positions"],
            "num_attention_heads": enc["n_heads"],
            "num_hidden_layers": enc["n_layers"],
            "num_key_value_heads": enc["n_heads"],
            "num_mel_bins": 128,
            "scale_embedding": False,
            "vocab_size": enc["vocab_size"],
        },
        "text_config": {
            "model_type": "llama",
            "attention_bias": False,
            "head_dim": params["head_dim"],
            "hidden_act": "silu",
            "hidden_size": params["dim"],
            "intermediate_size": params["hidden_dim"],
            "max_position_embeddings": params["max_seq_len"],
            "mlp_bias": False,
            "num_attention_heads": params["n_heads"],
            "num_hidden_layers": params["n_layers"],
            "num_key_value_heads": params["n_kv_heads"],
            "rms_norm_eps": params["norm_eps"],
            "rope_scaling": None,
            "rope_theta": params["rope_theta"],
            "sliding_window": None,
            "vocab_size": params["vocab_size"],
            "tie_word_embeddings": False,
        },
    }


def native_to_hf(sd: dict, params: dict) -> dict[str, torch.Tensor]:
    """transformers' convert_voxtral_weights_to_hf.py, forward direction."""

    E = "mm_whisper_embeddings.whisper_encoder"
    out = {}
    for name, t in sd.items():
        n = name
        if n == "mm_whisper_embeddings.tok_embeddings.weight":
            n = "language_model.model.embed_tokens.weight"
        elif n == "output.weight":
            n = "language_model.lm_head.weight"
        elif n == "norm.weight":
            n = "language_model.model.norm.weight"
        elif n.startswith("layers."):
            parts = n.split(".")
            i, rest = parts[1], ".".join(parts[2:])
            rest = {
                "attention_norm.weight": "input_layernorm.weight",
                "ffn_norm.weight": "post_attention_layernorm.weight",
                "attention.wq.weight": "self_attn.q_proj.weight",
                "attention.wk.weight": "self_attn.k_proj.weight",
                "attention.wv.weight": "self_attn.v_proj.weight",
                "attention.wo.weight": "self_attn.o_proj.weight",
                "feed_forward.w1.weight": "mlp.gate_proj.weight",
                "feed_forward.w2.weight": "mlp.down_proj.weight",
                "feed_forward.w3.weight": "mlp.up_proj.weight",
            }[rest]
            if rest == "self_attn.q_proj.weight":
                t = permute_rope(t, params["n_heads"])
            elif rest == "self_attn.k_proj.weight":
                t = permute_rope(t, params["n_kv_heads"])
            n = f"language_model.model.layers.{i}.{rest}"
        elif n.startswith(f"{E}.conv_layers."):
            n = n.replace(f"{E}.conv_layers.0", "audio_tower.conv1").replace(f"{E}.conv_layers.1", "audio_tower.conv2")
        elif n.startswith(f"{E}.transformer.norm."):
            n = n.replace(f"{E}.transformer.norm", "audio_tower.layer_norm")
        elif n.startswith(f"{E}.transformer.layers."):
            parts = n.split(".")
            i, rest = parts[4], ".".join(parts[5:])
            for a, b in (
                ("attention.wq", "self_attn.q_proj"),
                ("attention.wk", "self_attn.k_proj"),
                ("attention.wv", "self_attn.v_proj"),
                ("attention.wo", "self_attn.out_proj"),
                ("attention_norm", "self_attn_layer_norm"),
                ("ffn_norm", "final_layer_norm"),
                ("feed_forward.w1", "fc1"),
                ("feed_forward.w2", "fc2"),
            ):
                if rest.startswith(a + "."):
                    rest = b + rest[len(a) :]
                    break
            n = f"audio_tower.layers.{i}.{rest}"
        elif n.startswith("mm_whisper_embeddings.audio_language_projection."):
            n = {"0": "multi_modal_projector.linear_1.weight", "2": "multi_modal_projector.linear_2.weight"}[
                n.split(".")[2]
            ]
        out[n] = t
    enc = params["multimodal"]["whisper_model_args"]["encoder_args"]
    out["audio_tower.embed_positions.weight"] = sinusoids(enc["max_source_positions"], enc["dim"])
    return out


def write_voxtral(
    out: Path, seed: int = 0, params: dict = TINY_VOXTRAL, tekken: Path | None = None
) -> tuple[Path, Path]:
    """Write <out>/voxtral-native and <out>/voxtral-hf holding the same weights; return both directories."""
    native, hf = out / "voxtral-native", out / "voxtral-hf"
    native.mkdir(parents=True, exist_ok=True)
    hf.mkdir(parents=True, exist_ok=True)
    sd = voxtral_native_state(params, seed)
    (native / "params.json").write_text(json.dumps(params, indent=1))
    save_file(sd, str(native / "consolidated.safetensors"))
    tekken_path = native / "tekken.json"
    if tekken is None:
        write_tekken(tekken_path)
    else:
        tekken_path.write_bytes(Path(tekken).read_bytes())
    (hf / "tekken.json").write_bytes(tekken_path.read_bytes())
    (hf / "config.json").write_text(json.dumps(hf_voxtral_config(params), indent=1))
    hf_sd = native_to_hf(sd, params)
    names = sorted(hf_sd)
    shards = {
        "model-00001-of-00002.safetensors": names[: len(names) // 2],
        "model-00002-of-00002.safetensors": names[len(names) // 2 :],
    }
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: hf_sd[k].contiguous() for k in keys}, str(hf / fname), metadata={"format": "pt"})
        weight_map.update({k: fname for k in keys})
    total = sum(t.numel() * t.element_size() for t in hf_sd.values())
    (hf / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    return native, hf


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/demo")
    for d in write_voxtral(target):
        print(d)
