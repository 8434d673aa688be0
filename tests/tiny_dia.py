"""Tiny seeded Dia checkpoints (nari v0.1 and HF 0626 layouts, same weights) and a real-size random DAC
in descript's (weight_g/weight_v) and transformers' (folded) layouts (docs/testing.md)."""

import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny import _tensor  # noqa: E402

from speechrs.dia.config import DiaConfig  # noqa: E402
from speechrs.dia.dac import DAC, DacConfig  # noqa: E402
from speechrs.dia.model import Dia  # noqa: E402

TINY_DIA_V01 = {
    "version": "0.1",
    "model": {
        "encoder": {"n_layer": 2, "n_embd": 128, "n_hidden": 256, "n_head": 4, "head_dim": 32},
        "decoder": {
            "n_layer": 2,
            "n_embd": 256,
            "n_hidden": 512,
            "gqa_query_heads": 4,
            "kv_heads": 2,
            "gqa_head_dim": 32,
            "cross_query_heads": 4,
            "cross_head_dim": 32,
        },
        "src_vocab_size": 256,
        "tgt_vocab_size": 1028,
        "dropout": 0.0,
        "normalization_layer_epsilon": 1e-5,
        "weight_dtype": "float32",
        "rope_min_timescale": 1,
        "rope_max_timescale": 10000,
    },
    "training": {},
    "data": {
        "text_length": 1024,
        "audio_length": 256,
        "channels": 9,
        "text_pad_value": 0,
        "audio_eos_value": 1024,
        "audio_pad_value": 1025,
        "audio_bos_value": 1026,
        "delay_pattern": [0, 8, 9, 10, 11, 12, 13, 14, 15],
    },
}


def hf_0626_config(v01: dict) -> dict:
    m, d = v01["model"], v01["data"]
    e, dec = m["encoder"], m["decoder"]
    return {
        "architectures": ["DiaForConditionalGeneration"],
        "model_type": "dia",
        "is_encoder_decoder": True,
        "torch_dtype": "float32",
        "norm_eps": 1e-5,
        "delay_pattern": d["delay_pattern"],
        "bos_token_id": 1026,
        "eos_token_id": 1024,
        "pad_token_id": 1025,  # generate() reads them here
        "encoder_config": {
            "model_type": "dia_encoder",
            "hidden_size": e["n_embd"],
            "intermediate_size": e["n_hidden"],
            "num_hidden_layers": e["n_layer"],
            "num_attention_heads": e["n_head"],
            "num_key_value_heads": e["n_head"],
            "head_dim": e["head_dim"],
            "vocab_size": 256,
            "max_position_embeddings": d["text_length"],
            "norm_eps": 1e-5,
            "hidden_act": "silu",
            "rope_theta": 10000.0,
        },
        "decoder_config": {
            "model_type": "dia_decoder",
            "hidden_size": dec["n_embd"],
            "intermediate_size": dec["n_hidden"],
            "num_hidden_layers": dec["n_layer"],
            "num_attention_heads": dec["gqa_query_heads"],
            "num_key_value_heads": dec["kv_heads"],
            "head_dim": dec["gqa_head_dim"],
            "cross_num_attention_heads": dec["cross_query_heads"],
            "cross_num_key_value_heads": dec["cross_query_heads"],
            "cross_head_dim": dec["cross_head_dim"],
            "cross_hidden_size": e["n_embd"],
            "vocab_size": 1028,
            "num_channels": 9,
            "max_position_embeddings": d["audio_length"],
            "norm_eps": 1e-5,
            "hidden_act": "silu",
            "rope_theta": 10000.0,
            "bos_token_id": 1026,
            "eos_token_id": 1024,
            "pad_token_id": 1025,
        },
    }


def dia_canonical_state(cfg: DiaConfig, seed: int = 0, dtype=torch.float32) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Dia(cfg).state_dict().items()}
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            sd[name] = _tensor(name, shape, "gain", seed)
        elif "embed" in name:
            sd[name] = _tensor(name, shape, "embed", seed)
        elif name == "logits_dense.weight":
            sd[name] = _tensor(name, shape, "head", seed, shape[1])
        else:
            sd[name] = _tensor(name, shape, "linear", seed, shape[1])
        sd[name] = sd[name].to(dtype)  # one tensor at a time: a full-size model never exists in float32
    return sd


def canonical_to_nari(sd: dict, cfg: DiaConfig) -> dict[str, torch.Tensor]:
    """transformers' convert_dia_to_hf.py, backwards: Linear (out, in) -> DenseGeneral [in..., out...]."""
    out = {}
    for name, t in sd.items():
        if name == "decoder.embeddings.embed.weight":
            for c, table in enumerate(t.split(cfg.audio_vocab)):
                out[f"decoder.embeddings.{c}.weight"] = table.contiguous()
            continue
        if name == "logits_dense.weight":
            out["decoder.logits_dense.weight"] = t.T.reshape(cfg.dec_dim, cfg.channels, cfg.audio_vocab).contiguous()
            continue
        n = name.replace("mlp.gate_up_proj", "mlp.wi_fused").replace("mlp.down_proj", "mlp.wo")
        if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            attn = "encoder" if n.startswith("encoder") else "decoder"
            head_dim = {"encoder": cfg.enc_head_dim, "decoder": cfg.dec_head_dim}[attn]
            if "cross_attention" in n:
                head_dim = cfg.cross_head_dim
            t = t.T.reshape(t.shape[1], -1, head_dim)
        elif n.endswith("o_proj.weight"):
            head_dim = (
                cfg.cross_head_dim
                if "cross_attention" in n
                else (cfg.enc_head_dim if n.startswith("encoder") else cfg.dec_head_dim)
            )
            t = t.T.reshape(-1, head_dim, t.shape[0])
        elif n.endswith("wi_fused.weight"):
            t = t.T.reshape(t.shape[1], 2, -1)
        elif n.endswith("wo.weight"):
            t = t.T
        out[n] = t.contiguous()
    return out


def write_dia(out: Path, seed: int = 0, v01: dict = TINY_DIA_V01) -> tuple[Path, Path]:
    """<out>/dia-v01 (nari names, v0.1 config) and <out>/dia-0626 (HF names, 0626 config), same weights."""
    nari, hf = out / "dia-v01", out / "dia-0626"
    nari.mkdir(parents=True, exist_ok=True)
    hf.mkdir(parents=True, exist_ok=True)
    (nari / "config.json").write_text(json.dumps(v01, indent=1))
    (hf / "config.json").write_text(json.dumps(hf_0626_config(v01), indent=1))
    cfg = DiaConfig.load(nari / "config.json")
    sd = dia_canonical_state(cfg, seed)
    save_file(canonical_to_nari(sd, cfg), str(nari / "model.safetensors"))
    hf_sd = {("" if k == "logits_dense.weight" else "model.") + k: v for k, v in sd.items()}
    save_file(hf_sd, str(hf / "model.safetensors"), metadata={"format": "pt"})
    return nari, hf


def dac_canonical_state(cfg: DacConfig | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Folded weights: conv weight = ||v|| (1 + 0.05 N) * v/||v||, Snake alpha 1 + 0.1 N; the last conv's gain
    x 0.1 and the residual units' 1x1 convs x 0.3 keep the random decoder unsaturated and well conditioned."""
    from speechrs.dia.dac_encoder import Encoder

    cfg = cfg or DacConfig()
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in DAC(cfg).state_dict().items()}
        shapes.update({"encoder." + k: tuple(v.shape) for k, v in Encoder(cfg.latent_dim).state_dict().items()})
    last_conv = f"decoder.model.{len(cfg.rates) + 2}.weight"
    sd = {}
    for name, shape in shapes.items():
        if name.endswith("alpha"):
            sd[name] = _tensor(name, shape, "gain", seed)
        elif name.endswith("bias"):
            sd[name] = _tensor(name, shape, "bias", seed)
        elif name.endswith("codebook.weight"):
            sd[name] = _tensor(name, shape, "embed", seed)
        else:
            transposed = re.fullmatch(r"decoder\.model\.\d+\.block\.1\.weight", name)  # (in, out, k)
            fan_in = shape[0] * shape[2] // 2 if transposed else shape[1] * shape[2]
            v = _tensor(name + "_v", shape, "linear", seed, fan_in)
            gain = 1 + 0.05 * _tensor(name + "_g", (shape[0], 1, 1), "embed", seed)
            if name == last_conv:
                gain = gain * 0.1
            elif re.fullmatch(r"decoder\.model\.\d+\.block\.[234]\.block\.3\.weight", name) or re.fullmatch(
                r"encoder\.block\.\d+\.block\.[012]\.block\.3\.weight", name
            ):
                gain = gain * 0.3  # damp the residual branches: a random Snake stack is otherwise chaotic
            sd[name] = v * gain
    return sd


def write_dac(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """<out>/dac-descript (original names, weight_g/weight_v) and <out>/dac-hf (DacModel names, folded)."""
    orig, hf = out / "dac-descript", out / "dac-hf"
    orig.mkdir(parents=True, exist_ok=True)
    hf.mkdir(parents=True, exist_ok=True)
    cfg = DacConfig()
    sd = dac_canonical_state(cfg, seed)
    unfolded = {}
    for name, w in sd.items():
        if name.endswith(".weight") and w.ndim == 3:
            prefix = name[: -len(".weight")]
            norm = w.norm(dim=(1, 2), keepdim=True)
            unfolded[f"{prefix}.weight_g"] = norm.contiguous()
            scale = 1 + 0.5 * torch.rand(norm.shape, generator=torch.Generator().manual_seed(seed))  # v: any scale
            unfolded[f"{prefix}.weight_v"] = (w / norm * scale).contiguous()
        else:
            unfolded[name] = w
    save_file(unfolded, str(orig / "model.safetensors"))
    inverse = _canonical_to_hf_names(len(cfg.rates))
    save_file(
        {inverse(k): v.contiguous() for k, v in sd.items()}, str(hf / "model.safetensors"), metadata={"format": "pt"}
    )
    (hf / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["DacModel"],
                "model_type": "dac",
                "hidden_size": cfg.latent_dim,
                "decoder_hidden_size": cfg.decoder_dim,
                "upsampling_ratios": list(cfg.rates),
                "downsampling_ratios": [2, 4, 8, 8],
                "encoder_hidden_size": 64,
                "n_codebooks": cfg.n_codebooks,
                "codebook_size": cfg.codebook_size,
                "codebook_dim": cfg.codebook_dim,
                "sampling_rate": 44100,
                "hop_length": 512,
                "quantizer_dropout": 0.0,
                "commitment_loss_weight": 0.25,
                "codebook_loss_weight": 1.0,
            }
        )
    )
    return orig, hf


# transformers' part names inside a strided block, by position in descript's block (dac.py has its own table)
_BLOCK_PARTS = {
    "encoder": ["res_unit1", "res_unit2", "res_unit3", "snake1", "conv1"],
    "decoder": ["snake1", "conv_t1", "res_unit1", "res_unit2", "res_unit3"],
}


def _canonical_to_hf_names(n_blocks: int):
    """descript's names (encoder.block.i..., decoder.model.i...) -> transformers' DacModel names."""
    from speechrs.dia.dac import hf_to_canonical

    top = {0: "conv1", n_blocks + 1: "snake1", n_blocks + 2: "conv2"}  # the Sequential's items around the blocks

    def inverse(name: str) -> str:
        parts = name.split(".")
        half = parts[0]
        if half not in _BLOCK_PARTS:
            return name  # quantizer.* names are the same in both
        i, tail = int(parts[2]), ".".join(parts[3:])
        if i in top:
            hf = f"{half}.{top[i]}.{tail}"
        else:
            part, rest = _BLOCK_PARTS[half][int(parts[4])], ".".join(parts[5:])
            if part.startswith("res_unit"):  # ... .block.{k}.<weight>: the k-th of snake1, conv1, snake2, conv2
                rest = f"{['snake1', 'conv1', 'snake2', 'conv2'][int(parts[6])]}.{'.'.join(parts[7:])}"
            hf = f"{half}.block.{i - 1}.{part}.{rest}"
        assert hf_to_canonical(hf, n_blocks) == name, (hf, name)
        return hf

    return inverse


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/demo")
    for d in (*write_dia(target), *write_dac(target)):
        print(d)
