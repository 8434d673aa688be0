"""`speechrs quantize MODEL -o DIR`: a checkpoint written with its linears as int8 / int4 codes.

The same Linears as a load with `--quantize` (each family's model.quantized_kind: the decoder's in the kind asked,
the encoders' in int8), quantized the same way (so a load of DIR computes exactly what a load of MODEL with
`--quantize` does), one tensor at a time from the memory-mapped source; the result loads with `-m DIR` on any
machine (quant_store.py has the format).
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from speechrs.hub import resolve
from speechrs.linear.kinds import check_quantization
from speechrs.linear.quant_store import stored_quantization, write_quantized


@dataclass(frozen=True)
class QuantizedCheckpoint:
    directory: Path
    family: str
    layout: str
    quantize: str
    files: list[Path]

    @property
    def bytes(self) -> int:
        return sum(path.stat().st_size for path in self.files)


def quantize_checkpoint(
    model: str, out_dir: str | Path, quantize: str = "int8", on_tensor: Callable[[str], None] = lambda name: None
) -> QuantizedCheckpoint:
    """Quantize `model` (hub id or directory) into `out_dir` (new or empty); raises ValueError for a bad request,
    speechrs errors for a model that cannot be read."""
    kind = check_quantization(quantize)
    if kind is None:
        raise ValueError("speechrs quantize needs --quantize int8 or int4")
    source = resolve(model)
    if stored_quantization(source.directory) is not None:
        raise ValueError(f"{model} is already quantized by speechrs; quantize the original checkpoint")
    mappings: list = []
    if source.family == "voxtral":
        from speechrs.voxtral.checkpoint import canonical_tensors as voxtral_tensors
        from speechrs.voxtral.model import Voxtral

        _, tensors = voxtral_tensors(source.directory, source.layout, mappings)
        model_kind = Voxtral.quantized_kind
    else:
        from speechrs.dia.checkpoint import canonical_tensors as dia_tensors
        from speechrs.dia.config import DiaConfig
        from speechrs.dia.model import Dia

        tensors = dia_tensors(source.directory, DiaConfig.load(source.directory / "config.json"), mappings)
        model_kind = Dia.quantized_kind
    manifest = {"family": source.family, "layout": source.layout, "source": model}
    out = Path(out_dir).expanduser()
    quantized = lambda name: model_kind(name, kind)  # noqa: E731
    files = write_quantized(source.directory, tensors, quantized, kind, out, manifest, on_tensor)
    return QuantizedCheckpoint(out, source.family, source.layout, kind, files)
