"""What `speechrs speak` writes: the output file or stdout, the streamed WAV's sizes, and the progress bar over
decoder steps and pieces with the real-time factor at the end."""

import contextlib
import sys
import time
from pathlib import Path

from rich.console import Console


def open_output(path: Path):
    """The output file, or stdout's bytes for '-' (left open)."""
    if str(path) == "-":
        return contextlib.nullcontext(sys.stdout.buffer)
    return open(path, "wb")


def finish_wav_sizes(f) -> None:
    """Replace a streamed WAV header's unknown sizes (0xFFFFFFFF) with the real ones."""
    end = f.tell()
    f.seek(4)
    f.write((end - 8).to_bytes(4, "little"))
    f.seek(40)
    f.write((end - 44).to_bytes(4, "little"))
    f.seek(end)


def run_speech(events, quiet: bool, err: Console, on_audio=None):
    """Drive the step events through a rich progress bar, hand streamed pcm to on_audio; print the real-time
    factor; return the result."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from speechrs.dia.events import AudioChunk, SpeechResult, Step

    t0 = time.perf_counter()
    result = None
    with Progress(
        TextColumn("decoding{task.fields[piece]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[audio]:.1f} s audio"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    ) as progress:
        task = progress.add_task("decode", total=None, audio=0.0, piece="")
        for event in events:
            if isinstance(event, Step):
                piece = f" piece {event.piece + 1}/{event.pieces}" if event.pieces > 1 else ""
                progress.update(
                    task, completed=event.step, total=event.max_steps, audio=event.frames / 86.13, piece=piece
                )
            elif isinstance(event, AudioChunk) and on_audio is not None:
                on_audio(event.pcm)
            elif isinstance(event, SpeechResult):
                result = event
    wall = time.perf_counter() - t0
    if not quiet and result is not None:
        steps, secs = result.timings["steps"], result.duration_s
        err.print(
            f"{steps} steps in {result.timings['decode_s']:.1f} s ({steps / max(result.timings['decode_s'], 1e-9):.1f}"
            f" steps/s), DAC {result.timings['dac_s']:.2f} s; {secs:.2f} s of audio in {wall:.1f} s: "
            f"{secs / wall:.2f}x real time",
            highlight=False,
        )
    return result
