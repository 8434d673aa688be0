"""Dia config: the v0.1 schema (version/model/data, nari-labs/Dia-1.6B) or the HF 0626 schema
(encoder_config/decoder_config, DiaForConditionalGeneration), each parsed here into one frozen DiaConfig."""

from dataclasses import dataclass
from pathlib import Path

from speechrs.errors import UnsupportedModelError
from speechrs.jsonconf import getter as _getter
from speechrs.jsonconf import read_json
from speechrs.jsonconf import section as _sub

NARI_V01, HF_0626 = "nari_v01", "hf_0626"


def dia_schema(cfg: dict) -> str | None:
    """NARI_V01 for version/model/data, HF_0626 for encoder_config/decoder_config, None for neither."""
    if {"version", "model", "data"} <= set(cfg):
        return NARI_V01
    if {"encoder_config", "decoder_config"} <= set(cfg):
        return HF_0626
    return None


@dataclass(frozen=True)
class DiaConfig:
    generation: str  # NARI_V01 or HF_0626: decides cross-attention RoPE and the sampling rule
    enc_layers: int
    enc_dim: int
    enc_hidden: int  # MLP width
    enc_heads: int
    enc_kv_heads: int
    enc_head_dim: int
    dec_layers: int
    dec_dim: int
    dec_hidden: int
    dec_heads: int
    dec_kv_heads: int
    dec_head_dim: int
    cross_heads: int
    cross_kv_heads: int
    cross_head_dim: int
    text_vocab: int = 256  # bytes
    audio_vocab: int = 1028  # 1024 codes + EOS, PAD, BOS
    channels: int = 9
    norm_eps: float = 1e-5
    rope_min_timescale: float = 1.0
    rope_max_timescale: float = 10000.0
    text_length: int = 1024  # longest text in bytes
    audio_length: int = 3072  # generation cap in decoder steps
    eos: int = 1024
    pad: int = 1025
    bos: int = 1026
    delay_pattern: tuple[int, ...] = (0, 8, 9, 10, 11, 12, 13, 14, 15)

    @property
    def cross_rope(self) -> bool:
        """v0.1 rotates cross-attention q and k (nari 2811af1, mistral.rs); 0626 does not (65028e0)."""
        return self.generation == NARI_V01

    @property
    def max_delay(self) -> int:
        return max(self.delay_pattern)

    @classmethod
    def load(cls, path: Path) -> "DiaConfig":
        cfg = read_json(path)
        schema = dia_schema(cfg)
        if schema == NARI_V01:
            return cls.from_nari_v01(cfg, path)
        if schema == HF_0626:
            return cls.from_hf_0626(cfg, path)
        raise UnsupportedModelError(f"unknown Dia config schema in {path}: keys={sorted(cfg)}")

    @classmethod
    def from_nari_v01(cls, cfg: dict, path: Path) -> "DiaConfig":
        model, data = _sub(cfg, "model", path), _sub(cfg, "data", path)
        enc, dec = _sub(model, "encoder", path, "model."), _sub(model, "decoder", path, "model.")
        e, d = _getter(enc, path, "model.encoder."), _getter(dec, path, "model.decoder.")
        m, g = _getter(model, path, "model."), _getter(data, path, "data.")
        return cls(
            generation=NARI_V01,
            enc_layers=e("n_layer"),
            enc_dim=e("n_embd"),
            enc_hidden=e("n_hidden"),
            enc_heads=e("n_head"),
            enc_kv_heads=e("n_head"),
            enc_head_dim=e("head_dim"),
            dec_layers=d("n_layer"),
            dec_dim=d("n_embd"),
            dec_hidden=d("n_hidden"),
            dec_heads=d("gqa_query_heads"),
            dec_kv_heads=d("kv_heads"),
            dec_head_dim=d("gqa_head_dim"),
            cross_heads=d("cross_query_heads"),
            cross_kv_heads=d("cross_query_heads"),
            cross_head_dim=d("cross_head_dim"),
            text_vocab=m("src_vocab_size"),
            audio_vocab=m("tgt_vocab_size"),
            channels=g("channels"),
            norm_eps=model.get("normalization_layer_epsilon", 1e-5),
            rope_min_timescale=model.get("rope_min_timescale", 1),
            rope_max_timescale=model.get("rope_max_timescale", 10000),
            text_length=g("text_length"),
            audio_length=g("audio_length"),
            eos=g("audio_eos_value"),
            pad=g("audio_pad_value"),
            bos=g("audio_bos_value"),
            delay_pattern=tuple(g("delay_pattern")),
        )

    @classmethod
    def from_hf_0626(cls, cfg: dict, path: Path) -> "DiaConfig":
        enc, dec = _sub(cfg, "encoder_config", path), _sub(cfg, "decoder_config", path)
        e, d = _getter(enc, path, "encoder_config."), _getter(dec, path, "decoder_config.")
        rope = (dec.get("rope_parameters") or {}).get("rope_theta") or dec.get("rope_theta") or 10000.0

        def token(name: str, default: int) -> int:
            value = dec.get(name, cfg.get(name))
            return default if value is None else value

        return cls(
            generation=HF_0626,
            enc_layers=e("num_hidden_layers"),
            enc_dim=e("hidden_size"),
            enc_hidden=e("intermediate_size"),
            enc_heads=e("num_attention_heads"),
            enc_kv_heads=enc.get("num_key_value_heads") or e("num_attention_heads"),
            enc_head_dim=e("head_dim"),
            dec_layers=d("num_hidden_layers"),
            dec_dim=d("hidden_size"),
            dec_hidden=d("intermediate_size"),
            dec_heads=d("num_attention_heads"),
            dec_kv_heads=d("num_key_value_heads"),
            dec_head_dim=d("head_dim"),
            cross_heads=d("cross_num_attention_heads"),
            cross_kv_heads=dec.get("cross_num_key_value_heads") or d("cross_num_attention_heads"),
            cross_head_dim=d("cross_head_dim"),
            text_vocab=enc.get("vocab_size", 256),
            audio_vocab=d("vocab_size"),
            channels=d("num_channels"),
            norm_eps=dec.get("norm_eps", 1e-5),
            rope_max_timescale=rope,
            text_length=enc.get("max_position_embeddings", 1024),
            audio_length=dec.get("max_position_embeddings", 3072),
            eos=token("eos_token_id", 1024),
            pad=token("pad_token_id", 1025),
            bos=token("bos_token_id", 1026),
            delay_pattern=tuple(cfg.get("delay_pattern") or (0, 8, 9, 10, 11, 12, 13, 14, 15)),
        )
