"""silero-vad (16 kHz) in plain torch: the network of its TorchScript model (`silero_vad.jit`), with that model's
weights (`from_scripted`) or those of the safetensors file its wheel also ships (`load`); checked against the
TorchScript model in tests/test_transcripts.py.

Per 512-sample window (32 ms) with the 64 samples before it as context: reflect-pad 64 on the right, a
256-point STFT as a conv (hop 128, 4 frames), magnitude, four conv+ReLU layers (strides 1, 2, 2, 1: 4 frames ->
1), an LSTM cell carried from window to window, ReLU, a 1x1 conv and a sigmoid (silero_vad/tinygrad_model.py,
the package's own reference of the same weights). Only the LSTM cell is sequential, so the front end of a whole
block of windows runs as one batch.
"""

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from speechrs.errors import SpeechrsError

WINDOW, CONTEXT = 512, 64  # samples at 16 kHz


def weights_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise SpeechrsError("segment timestamps need the silero-vad package: pip install silero-vad")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "silero_vad_16k.safetensors"


class SileroVAD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stft_conv = nn.Conv1d(1, 258, kernel_size=256, stride=128, bias=False)  # cos and sin rows, 129 bins
        self.conv1 = nn.Conv1d(129, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, 128, 3, padding=1)
        self.lstm_cell = nn.LSTMCell(128, 128)
        self.final_conv = nn.Conv1d(128, 1, 1)

    @classmethod
    def load(cls) -> "SileroVAD":
        from safetensors.torch import load_file

        model = cls()
        model.load_state_dict(load_file(str(weights_path())))
        return model.eval()

    @classmethod
    def from_scripted(cls, state: dict) -> "SileroVAD":
        """The 16 kHz network of silero's TorchScript model (`_model`), its weights under this module's names."""
        names = {"stft.forward_basis_buffer": "stft_conv.weight"}
        names |= {f"encoder.{i}.reparam_conv.{t}": f"conv{i + 1}.{t}" for i in range(4) for t in ("weight", "bias")}
        names |= {f"decoder.rnn.{t}": f"lstm_cell.{t}" for t in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        names |= {f"decoder.decoder.2.{t}": f"final_conv.{t}" for t in ("weight", "bias")}
        model = cls()
        model.load_state_dict({names[k]: v for k, v in state.items()})
        return model.eval()

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, CONTEXT + WINDOW) samples -> (N, 128): everything before the recurrent cell, for N windows at once."""
        x = F.pad(windows, (0, CONTEXT), mode="reflect").unsqueeze(1)
        x = self.stft_conv(x)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))
        return x.squeeze(-1)

    def step(self, feature: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None):
        """(1, 128) -> speech probability (a float) and the cell's next state."""
        h, c = self.lstm_cell(feature, state)
        p = torch.sigmoid(self.final_conv(F.relu(h).unsqueeze(-1)))
        return float(p.mean()), (h, c)
