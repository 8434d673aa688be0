"""Quantized checkpoints (`speechrs quantize`): the codes written once, so a later load skips the quantizing.

A quantized directory holds the source's own config and tokenizer files (so family and layout are told as for
the source), `speechrs-quantized.json` (what was done, written last: a half-written directory does not load),
and the weights under the models' canonical names (layout renames and RoPE permutations already applied) in
`speechrs-quantized.safetensors`, or in shards with an index. Each Linear the loader would quantize is stored as
`<name>.qweight` + `<name>.scale` (int8, quant_codes.int8_codes) or `<name>.codes` + `<name>.scale_zero` (int4 in
quant_codes.int4_codes's portable layout: the kernel's own layout differs between AVX2 and AVX-512, so it is packed
at load on the machine that runs it); every other tensor is kept as the source had it. Each Linear is stored in
the kind its model quantizes it to when that kind is asked (`quantized_kind`: Voxtral's audio encoder is int8 in
an int4 directory too), and a Linear's bias is kept beside its codes.

Format 2 holds Voxtral's audio encoder's codes too, format 3 Dia's text encoder's; an older directory (written
before those encoders were quantized) still loads: an encoder it holds in float is quantized at load.
"""

import json
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from speechrs.errors import UnsupportedModelError
from speechrs.linear.kinds import QUANTIZATIONS
from speechrs.linear.quant import INT4_GROUP, STORED, StoredInt4, StoredInt8, int4_codes, int8_codes
from speechrs.weights import checkpoint_files, read_safetensors, tensor_names

MANIFEST = "speechrs-quantized.json"
WEIGHTS = "speechrs-quantized.safetensors"
INDEX = "speechrs-quantized.safetensors.index.json"
FORMAT = 3
READABLE = (1, 2, 3)  # 1: no audio-encoder codes, 1-2: no text-encoder codes (quantized at load)
SHARD_BYTES = 2**31  # a shard is written once it holds this much: the most the writer keeps in memory
_SOURCE_WEIGHTS = re.compile(r".*\.(safetensors|bin|pth|pt|ckpt)(\.index\.json)?")
_CODE_SUFFIX = {"int8": ".qweight", "int4": ".codes"}
INT4_GROUPS = (32, 64, 128, 256)  # what the kernel takes


def _manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        kind, version, group = manifest["quantize"], manifest["format"], manifest.get("int4_group")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UnsupportedModelError(f"{path} is not a readable speechrs quantization manifest: {e}") from None
    if version not in READABLE or kind not in QUANTIZATIONS or (kind == "int4" and group not in INT4_GROUPS):
        raise UnsupportedModelError(
            f"{path}: format {version!r}, {kind!r} (group {group!r}) is not one this speechrs reads "
            f"(format {' or '.join(map(str, READABLE))}, {' or '.join(QUANTIZATIONS)}); quantize the original "
            "checkpoint again"
        )
    return manifest


def stored_quantization(directory: Path) -> str | None:
    """'int8' / 'int4' for a directory `speechrs quantize` wrote, None for any other checkpoint."""
    manifest = _manifest(directory)
    return None if manifest is None else manifest["quantize"]


def _to_load(directory: Path, stored: str | None, asked: str | None) -> str | None:
    if stored is None or asked in (None, stored):
        return stored or asked
    raise ValueError(
        f"{directory} holds {stored} weights written by `speechrs quantize`; load it with --quantize {stored} or "
        f"none, or quantize the original checkpoint to {asked}"
    )


def quantization_to_load(directory: Path, asked: str | None) -> str | None:
    """The quantization a load uses: the stored one for a quantized directory (asking for it again is fine),
    else what was asked."""
    return _to_load(directory, stored_quantization(directory), asked)


@dataclass
class Stored:
    """A `speechrs quantize` directory's tensors as install_stored() set the model up to take them."""

    kind: str  # int8 / int4
    format: int
    tensors: Iterator[tuple[str, torch.Tensor]]
    keep_dtype: Callable[[str], bool]  # codes and scales, kept in their own dtype when the rest is cast


def install_stored(
    model: nn.Module,
    directory: Path,
    quantized_kind: Callable[[str, str], str | None],
    mappings: list,
    asked: str | None = None,
) -> Stored | None:
    """For a directory `speechrs quantize` wrote (None for any other checkpoint; a ValueError where `asked` is
    another quantization): put a StoredInt8/StoredInt4 in the place of every Linear whose codes it holds (each one
    the model quantizes to that kind when the directory's is asked: `quantized_kind(name, kind)`), on the meta
    model, so the loader fills them like any tensor. check_all_stored() then checks what was used."""
    manifest = _manifest(directory)
    if manifest is None:
        return None
    _to_load(directory, manifest["quantize"], asked)
    asked, files = manifest["quantize"], checkpoint_files(directory, WEIGHTS, INDEX)
    names = [n for path in files for n in tensor_names(path)]
    modules = [(n.removesuffix(sfx), kind) for n in names for kind, sfx in _CODE_SUFFIX.items() if n.endswith(sfx)]
    for name, kind in modules:
        parent, _, leaf = name.rpartition(".")
        try:
            linear = model.get_submodule(name) if quantized_kind(name, asked) == kind else None
        except AttributeError:  # e.g. a layer index past the config's
            linear = None
        if not isinstance(linear, nn.Linear):
            raise UnsupportedModelError(
                f"{directory}: {kind} tensors for {name}, which this model does not quantize to {kind} in {asked}"
            )
        holder: nn.Module
        if kind == "int8":
            holder = StoredInt8(linear.out_features, linear.in_features, bias=linear.bias is not None)
        else:
            holder = StoredInt4(linear.out_features, linear.in_features, int(manifest["int4_group"]))
        setattr(model.get_submodule(parent) if parent else model, leaf, holder)
    stored = {f"{m}.{b}" for m, _ in modules for b, _ in model.get_submodule(m).named_buffers() if b != "bias"}
    tensors = (item for path in files for item in read_safetensors(path, mappings))
    return Stored(manifest["quantize"], manifest["format"], tensors, stored.__contains__)


def check_all_stored(
    model: nn.Module,
    directory: Path,
    stored: Stored,
    quantized_kind: Callable[[str, str], str | None],
    int8_stored_since: int,
) -> None:
    """After the model's own quantizing step: every quantized Linear came from the directory's codes (none was
    quantized from a float weight, which would mean the directory lacks codes the loader expects; formats before
    `int8_stored_since` did not store the model's Linears always made int8) and none is left as a placeholder
    (codes for a Linear the loader does not quantize)."""
    older = stored.format < int8_stored_since
    unstored = (lambda name: quantized_kind(name, "int4") == "int8") if older else None
    fresh = [
        n
        for n, m in model.named_modules()
        if getattr(m, "quantized_at_load", False) and not (unstored is not None and unstored(n))
    ]
    left = [n for n, m in model.named_modules() if isinstance(m, tuple(STORED.values()))]
    if fresh or left:
        raise UnsupportedModelError(
            f"{directory}: its quantized tensors do not match this speechrs's model "
            f"(missing for {fresh[:3]}, unused for {left[:3]}); quantize the original checkpoint again"
        )


def write_quantized(
    source_dir: Path,
    tensors: Iterator[tuple[str, torch.Tensor]],
    quantized: Callable[[str], str | None],
    kind: str,
    out_dir: Path,
    manifest: dict,
    on_tensor: Callable[[str], None] = lambda name: None,
) -> list[Path]:
    """Write `tensors` (canonical names) to out_dir, each Linear weight as codes of the kind `quantized(name)`
    names (None: as it is), and copy the source's other files; `kind` is what was asked (int8 / int4). Returns the
    weight files written."""
    from safetensors.torch import save_file

    if out_dir.exists() and any(out_dir.iterdir()):
        half_way = any(out_dir.glob("speechrs-quantized*.safetensors")) and not (out_dir / MANIFEST).exists()
        hint = " (a write that stopped half way left it: remove it)" if half_way else ""
        raise ValueError(f"{out_dir} exists and is not empty; give a new directory{hint}")
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}

    def flush() -> None:
        files.append(out_dir / f"speechrs-quantized-{len(files) + 1:05d}.safetensors")
        save_file(shard, str(files[-1]), metadata={"format": "pt", "speechrs_quantize": kind})
        weight_map.update(dict.fromkeys(shard, files[-1].name))
        shard.clear()

    for name, tensor in tensors:
        base = name.removesuffix(".weight")
        stored_kind = quantized(base) if name.endswith(".weight") else None
        if stored_kind is not None:
            if stored_kind == "int8":
                parts = dict(zip((f"{base}.qweight", f"{base}.scale"), int8_codes(tensor), strict=True))
            else:
                parts = dict(zip((f"{base}.codes", f"{base}.scale_zero"), int4_codes(tensor), strict=True))
        else:
            parts = {name: tensor.contiguous()}
        shard.update(parts)
        if sum(t.numel() * t.element_size() for t in shard.values()) >= SHARD_BYTES:
            flush()
        on_tensor(name)
    if shard or not files:
        flush()
    if len(files) == 1:
        files = [files[0].rename(out_dir / WEIGHTS)]
    else:
        (out_dir / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1) + "\n")
    for path in sorted(source_dir.iterdir()):  # config, tokenizer, README: everything but the weights
        if path.is_file() and not _SOURCE_WEIGHTS.fullmatch(path.name) and path.name != MANIFEST:
            shutil.copyfile(path, out_dir / path.name)
    body = {"format": FORMAT, "quantize": kind, "int4_group": INT4_GROUP if kind == "int4" else None, **manifest}
    (out_dir / MANIFEST).write_text(json.dumps(body, indent=2) + "\n")
    return files
