"""The DAC decoder on a stream of frames: every frame passes each layer once, however the frames are pieced.

Each convolution keeps the inputs its next outputs need and emits only final samples, so no frame is decoded twice
(overlapping pieces would redo the decoder's reach, about 10 frames each way: docs/architecture.md); the output is
one whole-clip pass to float rounding (tests/test_dac.py). Axes: B batch, C channels, N samples at the layer's rate.
"""

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # dac.py imports this module
    from speechrs.dia.dac import DAC


CL = torch.channels_last


def _cat(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return b if a.shape[-1] == 0 else torch.cat([a, b], dim=-1)


def _tail(x: torch.Tensor, n: int) -> torch.Tensor:
    """The last n samples, copied: a view would keep the whole piece's activation alive until the next push."""
    return x[..., x.shape[-1] - n :].clone()


def _empty(x: torch.Tensor, channels: int) -> torch.Tensor:
    return x.new_zeros(x.shape[0], channels, 1, 0)


def as_channels_last(dac: "DAC") -> None:
    """Store the decoder's convolution weights as (out, in, 1, k) channels-last, each module's weight a view of it:
    oneDNN runs 2D channels-last convolutions over (B, C, 1, N) faster than conv1d (docs/architecture.md)."""
    for m in dac.decoder.modules():
        if isinstance(m, nn.Conv1d | nn.ConvTranspose1d):
            w4 = m.weight.detach()[:, :, None].contiguous(memory_format=CL)
            m.weight = nn.Parameter(w4[:, :, 0], requires_grad=False)


def _w4(conv: nn.Module) -> torch.Tensor:
    return conv.weight.unsqueeze(2)  # (out, in, 1, k) or (in, out, 1, k): channels-last after as_channels_last


class _Conv:
    """nn.Conv1d (stride 1, zero padding P each side) on a stream: it keeps the last 2P inputs (at first the left
    padding) and the stream's end adds the right padding. `before` (a Snake) writes straight into its input."""

    def __init__(self, conv: nn.Conv1d, batch: int, before: nn.Module | None = None):
        self.conv, self.weight, self.before = conv, _w4(conv), before
        self.matrix = self.weight.permute(0, 2, 3, 1).reshape(conv.out_channels, -1)  # (out, span * in): a view
        self.pad = int(conv.padding[0])  # padding is a tuple of ints here, never "same"
        self.span = conv.dilation[0] * (conv.kernel_size[0] - 1) + 1
        assert conv.stride == (1,) and self.span == 2 * self.pad + 1, "a symmetric 'same' convolution"
        self.held = conv.weight.new_zeros(batch, conv.in_channels, 1, self.pad).contiguous(memory_format=CL)

    def push(self, x_BxCx1xN: torch.Tensor, end: bool) -> torch.Tensor:
        (B, C, _, n), held = x_BxCx1xN.shape, self.held.shape[-1]
        z = self.held.new_empty(B, C, 1, held + n + (self.pad if end else 0)).contiguous(memory_format=CL)
        z[..., :held] = self.held
        if self.before is None:
            z[..., held : held + n] = x_BxCx1xN
        else:
            self.before(x_BxCx1xN, out=z[..., held : held + n])
        z[..., held + n :] = 0  # the right padding, at the end
        if z.shape[-1] < self.span:
            self.held = z
            return _empty(z, self.conv.out_channels)
        self.held = _tail(z, self.span - 1)
        if self.conv.dilation[0] == 1 and self.weight.numel() > self.span * z.numel():
            return self._unfolded(z)
        return F.conv2d(z, self.weight, self.conv.bias, dilation=(1, self.conv.dilation[0]))

    def _unfolded(self, z_BxCx1xL: torch.Tensor) -> torch.Tensor:
        """A dilation-1 convolution as one matmul of the input's windows by the weight's channels-last view, for a
        weight larger than the windows: oneDNN re-lays the weight out per call (slower: docs/architecture.md)."""
        B, C, _, L = z_BxCx1xL.shape  # z channels-last and fresh: in memory (B, L, C) from offset 0
        n, out = L - self.span + 1, self.conv.out_channels
        windows = z_BxCx1xL.as_strided((B, n, self.span, C), (L * C, C, C, 1))  # window t: samples t .. t + span - 1
        y = windows.reshape(B * n, -1) @ self.matrix.T
        if self.conv.bias is not None:
            y += self.conv.bias
        return y.view(B, n, 1, out).permute(0, 3, 2, 1)  # (B, out, 1, n), channels-last


class _ConvTranspose:
    """nn.ConvTranspose1d (kernel 2s, stride s, padding p) on a stream: each input adds to 2s outputs, so a piece's
    last s outputs wait for the next piece; the first and last p outputs are cropped, as the padding does."""

    def __init__(self, conv: nn.ConvTranspose1d, batch: int):
        self.conv, w4 = conv, _w4(conv)  # (in, out, 1, 2s), channels-last: in memory (in, 2s, out)
        self.stride, self.crop = conv.stride[0], int(conv.padding[0])
        assert conv.kernel_size[0] == 2 * self.stride, "DAC's upsampling kernels are twice their stride"
        self.weight = w4.permute(0, 2, 3, 1).reshape(conv.in_channels, -1)  # (in, 2s * out): a view, no copy
        self.pending = conv.weight.new_zeros(batch, conv.out_channels, 1, self.stride)
        self.to_crop = self.crop

    def _upsampled(self, x_BxCx1xN: torch.Tensor) -> torch.Tensor:
        """conv_transpose (no bias) as one matmul and an overlap-add (input t gives outputs t s .. t s + 2s - 1):
        oneDNN's conv_transpose2d re-lays the weight out per call (slower: docs/architecture.md)."""
        B, C, _, n = x_BxCx1xN.shape
        s, out = self.stride, self.conv.out_channels
        y = (x_BxCx1xN.permute(0, 2, 3, 1).reshape(B * n, C) @ self.weight).view(B, n, 2, s, out)
        full = y.new_empty(B, n + 1, s, out)
        full[:, :n] = y[:, :, 0]
        full[:, n] = 0
        full[:, 1:] += y[:, :, 1]
        return full.view(B, (n + 1) * s, 1, out).permute(0, 3, 2, 1)

    def push(self, x_BxCx1xN: torch.Tensor, end: bool) -> torch.Tensor:
        s, n = self.stride, x_BxCx1xN.shape[-1]
        if n:
            full = self._upsampled(x_BxCx1xN)  # (B, C, 1, (n + 1) s)
            full[..., :s] += self.pending
            ready, self.pending = full[..., : n * s], _tail(full, s)
        else:
            ready = self.pending[..., :0]
        if end:  # a new tensor: the bias below is added in place
            ready = torch.cat([ready, self.pending[..., : s - self.crop]], dim=-1)
        if self.to_crop:
            dropped = min(self.to_crop, ready.shape[-1])
            ready, self.to_crop = ready[..., dropped:], self.to_crop - dropped
        bias = self.conv.bias
        return ready if bias is None else ready.add_(bias[:, None, None])  # ready: `full`'s, or new


class _Residual:
    """ResidualUnit on a stream: its convolution lags, so the skip path keeps the inputs not yet matched by outputs.
    The first Snake writes conv1's input, the second and the skip work in place: a push allocates only the
    convolutions' inputs and outputs."""

    def __init__(self, unit: nn.Module, batch: int):
        self.snake1, conv1, self.snake2, self.conv2 = unit.block
        self.conv1, self.weight2 = _Conv(conv1, batch, before=self.snake1), _w4(self.conv2)
        self.skip = conv1.weight.new_zeros(batch, conv1.in_channels, 1, 0)

    def push(self, x_BxCx1xN: torch.Tensor, end: bool) -> torch.Tensor:
        y = self.conv1.push(x_BxCx1xN, end)
        if y.shape[-1]:  # torch's convolutions refuse empty inputs
            y = F.conv2d(self.snake2.apply_(y), self.weight2, self.conv2.bias)
        waiting, n = self.skip.shape[-1], y.shape[-1]  # y's samples: the waiting skip inputs, then x's first ones
        first = min(waiting, n)
        y[..., :first] += self.skip[..., :first]
        y[..., first:] += x_BxCx1xN[..., : n - first]
        self.skip = _cat(self.skip[..., first:], x_BxCx1xN[..., n - first :]).clone()
        return y


class StreamingDecoder:
    """One stream's DAC decode: push(codes of the next frames) -> the waveform samples (before tanh) final so far;
    push(..., end=True) gives the rest. No activation in a push exceeds `max_samples`, so its memory is bounded."""

    def __init__(self, dac: "DAC", batch: int = 1, max_samples: int = 8192):
        self.dac, self.max_samples = dac, max_samples
        self.layers: list = []  # stateful layers (push) and pointwise ones (Snake, applied in place)
        for layer in dac.decoder.model:
            for part in layer.block if hasattr(layer, "block") else [layer]:  # a DecoderBlock's parts, in order
                if isinstance(part, nn.Conv1d):  # the Snake before it, if any, writes its input
                    snake = self.layers.pop() if self.layers and not hasattr(self.layers[-1], "push") else None
                    self.layers.append(_Conv(part, batch, before=snake))
                elif isinstance(part, nn.ConvTranspose1d):
                    self.layers.append(_ConvTranspose(part, batch))
                elif hasattr(part, "block"):  # a ResidualUnit
                    self.layers.append(_Residual(part, batch))
                else:  # Snake
                    self.layers.append(part)

    @torch.inference_mode()
    def push(self, codes_BxQxT: torch.Tensor, end: bool = False) -> torch.Tensor:
        B, _, T = codes_BxQxT.shape
        if T:  # per frame: no state
            x = self.dac.quantizer.from_codes(codes_BxQxT)[:, :, None].contiguous(memory_format=CL)
        else:  # the end of a stream whose frames were all pushed before
            x = self.dac.decoder.model[0].weight.new_zeros(B, self.dac.cfg.latent_dim, 1, 0)
        return self._through(x, 0, end).reshape(B, -1)  # (B, 1, 1, samples) -> (B, samples)

    def _through(self, x_BxCx1xN: torch.Tensor, first: int, end: bool) -> torch.Tensor:
        """x through layers[first:]; an activation longer than max_samples goes on in pieces (each layer streams)."""
        x = x_BxCx1xN
        for i in range(first, len(self.layers)):
            if x.shape[-1] > self.max_samples:
                pieces = x.split(self.max_samples, dim=-1)
                outs = [self._through(p, i, end and j == len(pieces) - 1) for j, p in enumerate(pieces)]
                return torch.cat(outs, dim=-1)
            layer = self.layers[i]
            x = layer.push(x, end) if hasattr(layer, "push") else layer.apply_(x)  # x: the last layer's own
        return x
