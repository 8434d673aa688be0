"""The one routine both families' models run once their weights are real (Voxtral.prepare, Dia.prepare): each
layer's projections fused, then quantized (int8 / int4), or packed for oneDNN, or kept as fused Linears; bf16
weights on a CPU without native bf16 upcast for many rows. The model says which Linears (Linears groups), this
says what becomes of them."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from speechrs.kernels.cpu import upcast_on_this_cpu
from speechrs.linear.base import fuse_linears
from speechrs.linear.packing import Scratch, pack_fused, pack_linears, packable
from speechrs.linear.quant import quantize_fused, quantize_linears
from speechrs.linear.upcast import upcast_linears


@dataclass
class Linears:
    """Linear children of `parent` prepared together: `fused` groups (the new name -> the Linears that read the same
    input, one matmul for them all) and Linears `alone`; `unpacked` of those are never packed (they run once per
    request, not per step)."""

    parent: nn.Module
    fused: dict[str, list[str]] = field(default_factory=dict)
    alone: list[str] = field(default_factory=list)
    unpacked: tuple[str, ...] = ()


Layer = Sequence[Linears]


def _fuse(group: Linears) -> None:
    for name, parts in group.fused.items():
        setattr(group.parent, name, fuse_linears(*(getattr(group.parent, p) for p in parts)))


def _quantize(group: Linears, kind: str) -> None:
    for name, parts in group.fused.items():
        quantize_fused(group.parent, parts, name, kind)
    quantize_linears(group.parent, group.alone, kind)


def prepare_linears(
    model: nn.Module,
    encoder: Sequence[Layer],
    decoder: Sequence[Layer],
    head: str,
    quantize: str | None,
    reference: torch.Tensor,
    after_layer: Callable[[], None] = lambda: None,
    release=None,
) -> None:
    """`encoder`'s layers go int8 whenever the model is quantized (they multiply many rows once per request: int4
    would gain no speed there, only error), else are only fused. `decoder`'s layers and the output head `head` (a
    child of `model`) take `quantize`, or are packed for oneDNN where that runs (bf16 with native bf16, fp32), or
    only fused, as `reference` (a float weight of the model, its embedding) says this machine runs them best.
    `after_layer` runs after each quantized encoder layer and each decoder layer, so the loader can drop
    the replaced originals as it goes; `release(part)` drops a part of the head once it is quantized."""
    for layer in encoder:
        for group in layer:
            _quantize(group, "int8") if quantize is not None else _fuse(group)
        if quantize is not None:
            after_layer()
    pack, scratch = quantize is None and packable(reference), Scratch()
    for layer in decoder:
        for group in layer:
            if quantize is not None:
                _quantize(group, quantize)
            elif pack:
                for name, parts in group.fused.items():
                    pack_fused(group.parent, parts, name, scratch=scratch)
                pack_linears(group.parent, [n for n in group.alone if n not in group.unpacked])
            else:
                _fuse(group)
        after_layer()
    if quantize is not None:  # a part at a time, each `release`d (the loader's weights.release_pages)
        quantize_linears(model, [head], quantize, release)
    elif pack:
        pack_linears(model, [head])
    if upcast_on_this_cpu(reference):  # bf16 without hardware bf16: big matmuls in fp32 (upcast.py)
        upcast_linears(model)
