"""Tiny seeded transformers `Wav2Vec2ForCTC` checkpoints for the aligner's tests (test-only: needs transformers).
Run: python tests/tiny_align.py OUT

"base": GroupNorm on the first conv, post-norm encoder, no conv bias, saved as model.safetensors;
"large": LayerNorm after every conv, pre-norm encoder with a final LayerNorm, conv bias, saved as pytorch_model.bin
(a torch.save state dict, as older checkpoints ship).
Every parameter is redrawn from a generator seeded by the variant, so the files are the same on each run.
"""

import json
import sys
from pathlib import Path

import torch

# a wav2vec2-base-960h style character vocabulary: blank "<pad>" = 0 and the word delimiter "|"
TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ETAONIHSRDLUMWCFGYPBVK'XJQZ"]

COMMON = {
    "vocab_size": len(TOKENS),
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32, 32, 32),
    "conv_stride": (5, 2, 2),
    "conv_kernel": (10, 3, 3),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
VARIANTS = {
    "base": {"feat_extract_norm": "group", "do_stable_layer_norm": False, "conv_bias": False},
    "large": {"feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_bias": True},
}
SEEDS = {"base": 1, "large": 2}


def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter (norm gains about 1, the rest about the fan-in scale) so each one matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight") or name.endswith("original0"):
                p.copy_(1 + 0.2 * noise)  # norm gains and the weight norm's magnitude
            elif p.dim() == 1:
                p.copy_(0.2 * noise)
            else:
                fan_in = p[0].numel() if "original1" not in name else p.shape[1] * p.shape[2]
                p.copy_(noise / fan_in**0.5)


def write_align(out: Path) -> dict[str, Path]:
    """Write both variants under `out`; returns variant -> directory."""
    from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

    dirs = {}
    for variant, extra in VARIANTS.items():
        torch.manual_seed(SEEDS[variant])
        config = Wav2Vec2Config(**COMMON, **extra)
        model = Wav2Vec2ForCTC(config).eval()
        _randomize(model, SEEDS[variant])
        directory = out / variant
        model.save_pretrained(directory, safe_serialization=True)
        if variant == "large":
            # transformers 5 always writes safetensors; older checkpoints ship a pickled state dict instead
            (directory / "model.safetensors").unlink()
            torch.save(model.state_dict(), directory / "pytorch_model.bin")
        (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(TOKENS)}))
        dirs[variant] = directory
    return dirs


if __name__ == "__main__":
    print(write_align(Path(sys.argv[1])))
