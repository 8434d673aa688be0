"""A loaded CTC aligner timing a stretch of audio's transcript word by word: the model's emission over the
stretch (16 kHz mono, as decoded for the transcription), its log-softmax, then time_words (words.py)."""

import numpy as np
import torch

from speechrs.align.checkpoint import CtcCheckpoint
from speechrs.align.model import frame_stride, normalize_audio, num_frames
from speechrs.align.words import TimedWord, time_words


class Aligner:
    def __init__(self, checkpoint: CtcCheckpoint):
        self.checkpoint = checkpoint
        self.frame_s = frame_stride(checkpoint.model.config) / checkpoint.sample_rate

    @torch.inference_mode()
    def words(self, pcm: np.ndarray, transcript: str, language: str | None, start_s: float = 0.0) -> list[TimedWord]:
        """Every word of `transcript`, spoken in `pcm` (float32 mono at the checkpoint's rate, which starts at
        `start_s` in the original audio), with its start and end in the original audio's seconds."""
        ckpt = self.checkpoint
        end_s = start_s + len(pcm) / ckpt.sample_rate
        if num_frames(ckpt.model.config, len(pcm)) < 1:  # too short to hear: every word interpolated
            log_probs = np.zeros((0, ckpt.model.config.vocab_size), dtype=np.float32)
        else:
            x = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))[None]
            x = normalize_audio(x) if ckpt.do_normalize else x
            log_probs = ckpt.model(x)[0].float().log_softmax(-1).numpy()
        vocab = ckpt.vocab
        return time_words(
            log_probs, transcript, vocab.token_to_id, vocab.blank_id, language, self.frame_s, start_s, end_s
        )
