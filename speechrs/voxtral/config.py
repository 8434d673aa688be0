"""Voxtral configs, parsed in one place per on-disk format: params.json (native) or config.json (HF)."""

from dataclasses import dataclass
from pathlib import Path

from speechrs.errors import UnsupportedModelError
from speechrs.jsonconf import getter as _getter
from speechrs.jsonconf import read_json as _read_json
from speechrs.jsonconf import section


@dataclass(frozen=True)
class EncoderConfig:
    dim: int  # 1280 in the 3B
    n_layers: int
    n_heads: int
    head_dim: int
    hidden_dim: int  # MLP width, 4 * dim in the real model
    num_mel_bins: int = 128
    max_source_positions: int = 1500  # encoder frames per 30 s chunk (3000 mel frames / conv stride 2)
    norm_eps: float = 1e-5


@dataclass(frozen=True)
class VoxtralConfig:
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    norm_eps: float
    rope_theta: float
    vocab_size: int
    max_seq_len: int
    encoder: EncoderConfig
    downsample_factor: int = 4  # encoder frames stacked into one audio token

    @property
    def adapter_in_dim(self) -> int:
        return self.encoder.dim * self.downsample_factor

    @classmethod
    def from_params_json(cls, path: Path) -> "VoxtralConfig":
        params = _read_json(path)
        get = _getter(params, path)
        whisper = section(section(params, "multimodal", path), "whisper_model_args", path, "multimodal.")
        enc = whisper.get("encoder_args")
        if enc is None:
            raise UnsupportedModelError(f"{path}: multimodal.whisper_model_args has no encoder_args")
        if enc.get("causal", False):
            raise UnsupportedModelError(
                f"{path} describes a causal (Voxtral Realtime) audio encoder; speechrs runs Voxtral-Mini-3B-2507 "
                "(non-causal encoder) only"
            )
        enc_get = _getter(enc, path, "encoder_args.")
        audio_args = enc.get("audio_encoding_args", {})
        encoder = EncoderConfig(
            dim=enc_get("dim"),
            n_layers=enc_get("n_layers"),
            n_heads=enc_get("n_heads"),
            head_dim=enc_get("head_dim"),
            hidden_dim=enc_get("hidden_dim"),
            num_mel_bins=audio_args.get("num_mel_bins", 128),
            max_source_positions=enc.get("max_source_positions") or 1500,
            norm_eps=enc.get("norm_eps", 1e-5),
        )
        downsample = whisper.get("downsample_args", {}).get("downsample_factor", 4)
        return cls(
            dim=get("dim"),
            n_layers=get("n_layers"),
            n_heads=get("n_heads"),
            n_kv_heads=get("n_kv_heads"),
            head_dim=get("head_dim"),
            hidden_dim=get("hidden_dim"),
            norm_eps=params.get("norm_eps", 1e-5),
            rope_theta=params.get("rope_theta", 1e6),
            vocab_size=get("vocab_size"),
            max_seq_len=params.get("max_seq_len") or params.get("max_position_embeddings") or 131072,
            encoder=encoder,
            downsample_factor=downsample,
        )

    @classmethod
    def from_hf_config(cls, path: Path) -> "VoxtralConfig":
        cfg = _read_json(path)
        archs = cfg.get("architectures") or []
        if "VoxtralForConditionalGeneration" not in archs:
            raise UnsupportedModelError(f"{path}: architectures={archs}, expected VoxtralForConditionalGeneration")
        text, audio = section(cfg, "text_config", path), section(cfg, "audio_config", path)
        t, a = _getter(text, path, "text_config."), _getter(audio, path, "audio_config.")
        encoder = EncoderConfig(
            dim=a("hidden_size"),
            n_layers=a("num_hidden_layers"),
            n_heads=a("num_attention_heads"),
            head_dim=audio.get("head_dim") or a("hidden_size") // a("num_attention_heads"),
            hidden_dim=a("intermediate_size"),
            num_mel_bins=audio.get("num_mel_bins", 128),
            max_source_positions=audio.get("max_source_positions", 1500),
        )
        # transformers reshapes encoder frames to audio_config.intermediate_size, i.e. stacks this many frames
        downsample, rem = divmod(encoder.hidden_dim, encoder.dim)
        if rem:
            raise UnsupportedModelError(
                f"{path}: audio intermediate_size {encoder.hidden_dim} is not a multiple of hidden_size {encoder.dim}"
            )
        return cls(
            dim=t("hidden_size"),
            n_layers=t("num_hidden_layers"),
            n_heads=t("num_attention_heads"),
            n_kv_heads=text.get("num_key_value_heads") or t("num_attention_heads"),
            head_dim=text.get("head_dim") or t("hidden_size") // t("num_attention_heads"),
            hidden_dim=t("intermediate_size"),
            norm_eps=text.get("rms_norm_eps", 1e-5),
            rope_theta=text.get("rope_theta") or (text.get("rope_parameters") or {}).get("rope_theta", 1e6),
            vocab_size=t("vocab_size"),
            max_seq_len=text.get("max_position_embeddings", 131072),
            encoder=encoder,
            downsample_factor=downsample,
        )
