"""Checkpoint I/O shared by every family: zero-copy safetensors, regex renames, meta-device assignment."""

import json
import mmap
import re
import struct
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from speechrs.errors import UnsupportedModelError

# safetensors dtype tags -> torch dtypes (https://github.com/huggingface/safetensors, format spec)
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}

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


def read_safetensors(path: Path, mappings: list | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) views of a memory-mapped file: nothing is read until a tensor is touched.

    Like gpt-fast's torch.load(mmap=True), the file's pages are the weights. One private mapping per file
    (the kernel can map it with huge pages, so first use pages it in fast). Pass `mappings` to collect the
    mapping, then call release_unused() once the model holds its final tensors: pages of tensors the loader
    replaced (permuted, cast, fused) leave resident memory.
    """
    try:
        header_len, header = _header(path)
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnsupportedModelError(f"{path} is not a readable safetensors file: {e}") from None
    data_start = 8 + header_len
    with open(path, "rb") as f:
        # read-only and shared, as safetensors maps: the kernel can then map page-cache huge pages whole,
        # where a private writable mapping faults 4 KiB at a time (several seconds for a 9 GB model)
        mapped = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    with warnings.catch_warnings():  # "not writable": weights are never written in place
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(mapped, dtype=torch.uint8)
    if mappings is not None:
        mappings.append((mapped, flat.data_ptr(), len(mapped)))
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise UnsupportedModelError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        dtype = _DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        raw = flat[data_start + begin : data_start + end]
        if (data_start + begin) % dtype.itemsize:
            raw = raw.clone()  # misaligned for its dtype: one copy
        yield name, raw.view(dtype).reshape(info["shape"])


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """[first, last + 1) byte addresses a tensor (any strides) touches."""
    last = sum((n - 1) * stride for n, stride in zip(t.shape, t.stride(), strict=True))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def release_unused(mappings: list, module: nn.Module) -> None:
    """madvise(DONTNEED) every page of the mapped files that no parameter or buffer of `module` uses."""
    live = [_extent(t) for t in [*module.parameters(), *module.buffers()] if t.numel()]
    for mapped, base, size in mappings:
        used = sorted(
            (max(a, base) - base, min(b, base + size) - base) for a, b in live if a < base + size and b > base
        )
        cursor = 0
        for a, b in [*used, (size, size)]:
            start = -(-cursor // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages strictly inside the gap
            stop = a - a % mmap.PAGESIZE
            if stop > start:
                mapped.madvise(mmap.MADV_DONTNEED, start, stop - start)
            cursor = max(cursor, b)


def release_pages(mappings: list, t: torch.Tensor) -> None:
    """madvise(DONTNEED) the whole pages of the mapped files inside `t`'s extent, e.g. a weight just quantized a
    part at a time: its pages leave resident memory before the model is done (the file's pages stay in the page
    cache, so a later read of `t` faults them back unchanged; memory that is not a mapped file is left alone)."""
    a, b = _extent(t)
    for mapped, base, size in mappings:
        lo, hi = max(a, base) - base, min(b, base + size) - base
        start, stop = -(-lo // mmap.PAGESIZE) * mmap.PAGESIZE, hi - hi % mmap.PAGESIZE
        if stop > start:
            mapped.madvise(mmap.MADV_DONTNEED, start, stop - start)


def checkpoint_files(directory: Path, single: str, index: str) -> list[Path]:
    """The files of one safetensors checkpoint: `index` lists shards, else the one file `single`."""
    index_path = directory / index
    if index_path.exists():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        return [directory / name for name in sorted(set(weight_map.values()))]
    if (directory / single).exists():
        return [directory / single]
    raise UnsupportedModelError(f"{directory}: neither {index} nor {single} found")


def rename(name: str, table: Sequence[tuple[str, str | None]]) -> str | None:
    """First matching regex wins; a rule whose replacement is None drops the tensor; no match keeps the name."""
    for pattern, repl in table:
        if re.fullmatch(pattern, name):
            return None if repl is None else re.sub(pattern, repl, name)
    return name


def load_into(
    model: nn.Module,
    tensors: Iterator[tuple[str, torch.Tensor]],
    dtype: torch.dtype | None,
    device: torch.device | str = "cpu",
    keep_dtype: Callable[[str], bool] | None = None,
) -> None:
    """Assign canonical-named tensors to a model built on the meta device; every parameter must be filled.

    Floating tensors are cast to `dtype` (None keeps the checkpoint's), except those `keep_dtype` names (a
    quantized Linear's scales); shapes are asserted.
    """
    expected = dict(model.state_dict(keep_vars=True))
    seen: dict[str, torch.Tensor] = {}
    for name, tensor in tensors:
        if name not in expected:
            raise UnsupportedModelError(f"unexpected tensor '{name}' in checkpoint")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise UnsupportedModelError(
                f"tensor '{name}' has shape {tuple(tensor.shape)}, the config implies {tuple(expected[name].shape)}"
            )
        keep = keep_dtype is not None and keep_dtype(name)
        if keep and tensor.dtype != expected[name].dtype:
            raise UnsupportedModelError(f"tensor '{name}' is {tensor.dtype}, expected {expected[name].dtype}")
        if tensor.is_floating_point() and dtype is not None and tensor.dtype != dtype and not keep:
            tensor = tensor.to(dtype)
        seen[name] = tensor.to(device)
    missing = sorted(set(expected) - set(seen))
    if missing:
        raise UnsupportedModelError(f"checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    model.load_state_dict(seen, strict=True, assign=True)
