"""Dia's delay pattern: channel c of frame f is written at row 1 + f + delay[c], after one BOS row."""

import torch

from speechrs.dia.config import DiaConfig


def delay(codes_TxC: torch.Tensor, delays: list[int], bos: int, pad: int) -> torch.Tensor:
    """Undelayed (T, C) -> delayed (T + 1 + max_delay, C) with the BOS row first and PAD past the end."""
    T, C = codes_TxC.shape
    out = torch.full((T + 1 + max(delays), C), pad, dtype=codes_TxC.dtype)
    for c, d in enumerate(delays):
        out[: d + 1, c] = bos
        out[d + 1 : d + 1 + T, c] = codes_TxC[:, c]
    return out


def undelay(delayed_RxC: torch.Tensor, delays: list[int], n_frames: int) -> torch.Tensor:
    """Delayed rows (BOS row first) -> (n_frames, C): frame f of channel c is row 1 + f + delay[c]."""
    return torch.stack([delayed_RxC[1 + d : 1 + d + n_frames, c] for c, d in enumerate(delays)], dim=1)


def frames(delayed_RxC: torch.Tensor, start: int, stop: int, cfg: DiaConfig) -> torch.Tensor:
    """Undelayed frames [start, stop) (T, C) of the delayed rows, codes outside 0..1023 set to 0 (mistral.rs)."""
    codes = undelay(delayed_RxC, list(cfg.delay_pattern), stop)[start:]
    return torch.where((codes < 0) | (codes >= cfg.eos), 0, codes)
