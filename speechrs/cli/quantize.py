"""`speechrs quantize MODEL -o DIR`: write a checkpoint's int8 / int4 codes once, so later loads skip the work."""

import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from speechrs.linear.kinds import QUANTIZATIONS

Kind = Enum("Kind", {kind: kind for kind in QUANTIZATIONS}, type=str)  # type: ignore[misc]  # one spelling
INT8 = Kind("int8")

err = Console(stderr=True, soft_wrap=True)


def quantize(
    model: Annotated[str, typer.Argument(help="Hub id or local directory of a Voxtral or Dia checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New (or empty) directory to write.")],
    kind: Annotated[Kind, typer.Option("--quantize", help="int8 per channel, or int4 in groups of 32.")] = INT8,
):
    """Quantize MODEL's decoder linears and output head (and Voxtral's audio encoder or Dia's text encoder, to int8)
    into DIR; load it later with -m DIR (any machine)."""
    from speechrs.errors import SpeechrsError
    from speechrs.quantize_checkpoint import quantize_checkpoint

    t0, count = time.perf_counter(), 0
    with err.status(f"quantizing {model} to {kind.value}", spinner="dots") as status:

        def progress(name: str) -> None:
            nonlocal count
            count += 1
            status.update(f"quantizing {model} to {kind.value}: {count} tensors, {name}")

        try:
            done = quantize_checkpoint(model, output, kind.value, progress)
        except (SpeechrsError, ValueError) as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False)
            raise typer.Exit(1) from None
        except OSError as e:
            err.print(f"[bold red]error:[/] cannot write {output}: {e.strerror or e}", highlight=False)
            raise typer.Exit(1) from None
    err.print(
        f"wrote {done.directory} ({done.family}, {done.layout} layout, {done.quantize}): {count} tensors, "
        f"{done.bytes / 2**30:.2f} GiB in {len(done.files)} file(s), {time.perf_counter() - t0:.1f} s; "
        f"load it with -m {done.directory}",
        highlight=False,
    )
