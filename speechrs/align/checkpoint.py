"""Loading a transformers `Wav2Vec2ForCTC` directory: config.json, vocab.json, and model.safetensors (or its shards)
or pytorch_model.bin; the positional conv's weight norm is folded into one weight."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from speechrs.align.model import Wav2Vec2Config, Wav2Vec2CTC
from speechrs.errors import ModelNotFoundError, UnsupportedModelError
from speechrs.jsonconf import read_json
from speechrs.weights import checkpoint_files, read_safetensors

PREFIX = "wav2vec2."
POS_CONV = "encoder.pos_conv_embed.conv."
# weight-norm magnitude and direction, in older (torch.nn.utils.weight_norm) and newer (parametrizations) names
WEIGHT_G = ("weight_g", "parametrizations.weight.original0")
WEIGHT_V = ("weight_v", "parametrizations.weight.original1")
# tensors of a CTC checkpoint that inference does not use (the SpecAugment mask vector)
IGNORED = {"wav2vec2.masked_spec_embed"}
WORD_DELIMITER = "|"


@dataclass(frozen=True)
class CtcVocab:
    """The CTC vocabulary: token -> id, the blank (pad) id, and the word delimiter's id ("|") when it has one."""

    token_to_id: dict[str, int]
    blank_id: int
    delimiter_id: int | None

    @property
    def id_to_token(self) -> dict[int, str]:
        return {i: t for t, i in self.token_to_id.items()}


@dataclass
class CtcCheckpoint:
    """A loaded aligner model: the model (eval, on the CPU), its vocabulary and its audio preprocessing."""

    model: Wav2Vec2CTC
    vocab: CtcVocab
    do_normalize: bool
    sample_rate: int


def read_config(path: Path) -> Wav2Vec2Config:
    """config.json -> Wav2Vec2Config; only model_type "wav2vec2", without adapters, is accepted."""
    raw = read_json(path)
    model_type = raw.get("model_type")
    if model_type != "wav2vec2":
        raise UnsupportedModelError(f"{path}: model_type '{model_type}' is not supported; expected 'wav2vec2'")
    if raw.get("add_adapter") or raw.get("adapter_attn_dim") is not None:
        raise UnsupportedModelError(f"{path}: wav2vec2 adapters (add_adapter, adapter_attn_dim) are not supported")
    if "pad_token_id" in raw and raw["pad_token_id"] is None:
        raise UnsupportedModelError(f"{path}: pad_token_id is null; the CTC blank must be a token id")
    defaults = Wav2Vec2Config()
    values: dict[str, Any] = {}
    for f in fields(Wav2Vec2Config):
        if raw.get(f.name) is None:
            continue  # absent: transformers' default
        value, kind = raw[f.name], type(getattr(defaults, f.name))
        if kind is tuple:
            ok = isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
            value = tuple(value) if ok else value
        elif kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            raise UnsupportedModelError(f"{path}: '{f.name}' is {value!r}; expected a {kind.__name__}")
        values[f.name] = value
    try:
        return Wav2Vec2Config(**values)
    except ValueError as e:
        raise UnsupportedModelError(f"{path}: {e}") from e


def read_vocab(path: Path, config: Wav2Vec2Config) -> CtcVocab:
    """vocab.json (token -> id); the blank is config.pad_token_id, which must be an id of the vocabulary."""
    raw = read_json(path)
    if not isinstance(raw, dict) or not all(isinstance(i, int) for i in raw.values()):
        raise UnsupportedModelError(f"{path}: expected an object of token -> integer id")
    if any(not 0 <= i < config.vocab_size for i in raw.values()):
        raise UnsupportedModelError(f"{path}: an id lies outside the model's vocabulary of {config.vocab_size}")
    if config.pad_token_id not in raw.values():
        raise UnsupportedModelError(f"{path}: no token has the blank (pad_token_id) id {config.pad_token_id}")
    return CtcVocab(dict(raw), config.pad_token_id, raw.get(WORD_DELIMITER))


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """transformers' state dict, from model.safetensors (or its index and shards) or else pytorch_model.bin."""
    if (directory / "model.safetensors").exists() or (directory / "model.safetensors.index.json").exists():
        files = checkpoint_files(directory, "model.safetensors", "model.safetensors.index.json")
        return {name: t for f in files for name, t in read_safetensors(f)}
    if (directory / "pytorch_model.bin").exists():
        try:
            state = torch.load(directory / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:  # a corrupt pickle or one holding more than tensors
            raise UnsupportedModelError(f"{directory / 'pytorch_model.bin'}: cannot read it: {e}") from e
        if not isinstance(state, dict):
            raise UnsupportedModelError(f"{directory / 'pytorch_model.bin'}: expected a state dict")
        return state
    raise ModelNotFoundError(f"{directory}: no weights (model.safetensors or pytorch_model.bin)")


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """weight = g * v / ||v||, the norm over every dim but 2 (the kernel), as transformers' weight_norm(dim=2)."""
    return torch._weight_norm(v, g, 2)


def convert_state_dict(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """transformers' names -> the model's: the `wav2vec2.` prefix dropped, the positional conv's weight folded.

    Unused tensors (IGNORED) are dropped; other names are kept as they are, for the caller to report.
    """
    out: dict[str, torch.Tensor] = {}
    norm: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in IGNORED:
            continue
        short = name.removeprefix(PREFIX)
        tensor = tensor.to(dtype) if tensor.is_floating_point() else tensor
        suffix = short.removeprefix(POS_CONV)
        if short.startswith(POS_CONV) and suffix in WEIGHT_G + WEIGHT_V:
            norm["g" if suffix in WEIGHT_G else "v"] = tensor
        else:
            out[short] = tensor
    if norm:
        if set(norm) != {"g", "v"}:
            missing = "magnitude (weight_g)" if "g" not in norm else "direction (weight_v)"
            raise UnsupportedModelError(f"the positional conv's weight norm lacks its {missing}")
        out[POS_CONV + "weight"] = fold_weight_norm(norm["g"], norm["v"])
    return out


def load_state(model: Wav2Vec2CTC, state: dict[str, torch.Tensor]) -> None:
    """Assign converted tensors to `model` (built on the meta device or not); every parameter must be filled."""
    expected = model.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {unexpected[:5]}")
        raise UnsupportedModelError(f"the checkpoint does not match the wav2vec2 CTC model: {'; '.join(parts)}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UnsupportedModelError(
                f"tensor '{name}' has shape {tuple(tensor.shape)}, the config implies {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=True, assign=True)


def read_preprocessor(directory: Path) -> tuple[bool, int]:
    """(do_normalize, sampling_rate) from preprocessor_config.json; transformers' defaults when it is absent."""
    path = directory / "preprocessor_config.json"
    if not path.exists():
        return True, 16000
    raw = read_json(path)
    return bool(raw.get("do_normalize", True)), int(raw.get("sampling_rate", 16000))


def load_checkpoint(directory: str | Path, dtype: torch.dtype = torch.float32) -> CtcCheckpoint:
    """Load a `Wav2Vec2ForCTC` directory onto the CPU in `dtype`, in eval mode.

    Safetensors weights stay read-only views of the mapped file, as every speechrs loader's: never write them in place.
    """
    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ModelNotFoundError(f"{directory}: no config.json (expected a transformers Wav2Vec2ForCTC directory)")
    config = read_config(directory / "config.json")
    if not (directory / "vocab.json").is_file():
        raise ModelNotFoundError(f"{directory}: no vocab.json (the CTC vocabulary)")
    vocab = read_vocab(directory / "vocab.json", config)
    do_normalize, sample_rate = read_preprocessor(directory)
    state = convert_state_dict(read_weights(directory), dtype)
    with torch.device("meta"):
        model = Wav2Vec2CTC(config)
    load_state(model, state)
    return CtcCheckpoint(model.eval(), vocab, do_normalize, sample_rate)
