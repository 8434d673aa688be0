"""Checkpoint I/O shared by every family: zero-copy safetensors, regex renames, meta-device assignment."""
import json
import mmap
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from .errors import UnsupportedModelError

# safetensors dtype tags -> torch dtypes (https://github.com/huggingface/safetensors, format spec)
_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}

_HUGE_PAGE = 2 * 2**20  # a multiple of mmap.ALLOCATIONGRANULARITY

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """'auto'/None -> None (keep the checkpoint's dtype); otherwise one of DTYPES, with short aliases."""
    if name in (None, "auto"):
        return None
    aliases = {"fp32": "float32", "f32": "float32", "bf16": "bfloat16", "fp16": "float16", "f16": "float16"}
    key = aliases.get(name, name)
    if key not in DTYPES:
        raise ValueError(f"unknown dtype '{name}'; choose auto, {', '.join(DTYPES)}")
    return DTYPES[key]


def _header(path: Path) -> tuple[int, dict]:
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        return header_len, json.loads(f.read(header_len))


def tensor_names(path: Path) -> list[str]:
    """Names in a safetensors file, from its header alone."""
    return [name for name in _header(path)[1] if name != "__metadata__"]


def read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) views of a memory-mapped file: nothing is read until a tensor is touched.

    Like gpt-fast's torch.load(mmap=True), the file's pages are the weights. Each tensor has a private mapping
    of its own, so a tensor that a loader transforms (permutes, casts, fuses) and drops is unmapped with it:
    a checkpoint never costs its bytes twice in resident memory.
    """
    try:
        header_len, header = _header(path)
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnsupportedModelError(f"{path} is not a readable safetensors file: {e}") from None
    data_start = 8 + header_len
    with open(path, "rb") as f:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _DTYPES:
                raise UnsupportedModelError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
            dtype = _DTYPES[info["dtype"]]
            begin, end = info["data_offsets"]
            start, n_bytes = data_start + begin, end - begin
            if n_bytes == 0:
                yield name, torch.empty(info["shape"], dtype=dtype)
                continue
            # map from a 2 MiB-aligned offset, so the kernel can back the tensor with huge pages (fewer TLB misses)
            base = start - start % _HUGE_PAGE
            mapped = mmap.mmap(f.fileno(), start + n_bytes - base, flags=mmap.MAP_PRIVATE,
                               prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
            raw = torch.frombuffer(mapped, dtype=torch.uint8, offset=start - base, count=n_bytes)
            if start % dtype.itemsize:
                raw = raw.clone()  # misaligned for its dtype: one copy
            yield name, raw.view(dtype).reshape(info["shape"])


def checkpoint_files(directory: Path, single: str, index: str) -> list[Path]:
    """The files of one safetensors checkpoint: `index` lists shards, else the one file `single`."""
    index_path = directory / index
    if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    if (directory / single).exists():
        return [directory / single]
    raise UnsupportedModelError(f"{directory}: neither {index} nor {single} found")


def rename(name: str, table: list[tuple[str, str]]) -> str | None:
    """First matching regex wins; a rule whose replacement is None drops the tensor; no match keeps the name."""
    for pattern, repl in table:
        if re.fullmatch(pattern, name):
            return None if repl is None else re.sub(pattern, repl, name)
    return name


def load_into(model: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]], dtype: torch.dtype | None,
              device: torch.device | str = "cpu",
              transform: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Assign canonical-named tensors to a model built on the meta device; every parameter must be filled.

    Floating tensors are cast to `dtype` (None keeps the checkpoint's); shapes are asserted.
    """
    expected = dict(model.state_dict(keep_vars=True))
    seen: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        if transform is not None:
            tensor = transform(name, tensor)
        if name not in expected:
            raise UnsupportedModelError(f"unexpected tensor '{name}' in checkpoint")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UnsupportedModelError(
                f"tensor '{name}' has shape {tuple(tensor.shape)}, the config implies {tuple(expected[name].shape)}")
        if tensor.is_floating_point() and dtype is not None and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        seen[name] = tensor.to(device)
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise UnsupportedModelError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    model.load_state_dict(seen, strict=True, assign=True)
