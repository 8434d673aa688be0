"""speechrs command line: results on stdout, progress and errors on stderr, non-zero exit on failure."""
import json
import logging
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import SpeechrsError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Local speech models: Voxtral transcription and audio chat.")
err = Console(stderr=True, soft_wrap=True)  # one message, one line: no hard wraps


class OutputFormat(str, Enum):
    text = "text"
    json = "json"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False):
    if version:
        from . import __version__

        print(__version__)
        raise typer.Exit()


def _fail(message: str, code: int = 1):
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def transcribe(
    audio: Annotated[Path, typer.Argument(help="Audio file: wav, flac, ogg or mp3, any rate and channel count.")],
    model: Annotated[str, typer.Option("-m", "--model", help="Hub id or local directory.")]
    = "mistralai/Voxtral-Mini-3B-2507",
    language: Annotated[Optional[str], typer.Option(help="ISO 639-1 code, e.g. en; omit to let the model choose.")]
    = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Most tokens to generate [default: one per audio token]")]
    = None,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus mass kept when sampling.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="Seed for sampling.")] = None,
    dtype: Annotated[DType, typer.Option(help="Weights dtype; auto keeps the checkpoint's.")] = DType.auto,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    output_format: Annotated[OutputFormat, typer.Option("--format", help="text, or json with usage.")]
    = OutputFormat.text,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress on stderr.")] = False,
):
    """Transcribe an audio file with Voxtral; the text goes to stdout."""
    from .api import VoxtralModel

    if not audio.is_file():
        _fail(f"audio file not found: {audio}")
    try:
        loaded = _load(model, dtype.value, device, quiet)
        if not isinstance(loaded, VoxtralModel):
            _fail(f"{model} is not a Voxtral model; transcribe needs audio-in, text-out")
        events = loaded.transcribe_stream(str(audio), language, max_tokens=max_tokens, temperature=temperature,
                                          top_p=top_p, seed=seed)
        done = _run_text(events, stream=output_format == OutputFormat.text, quiet=quiet)
    except SpeechrsError as e:
        _fail(str(e))
    if output_format == OutputFormat.json:
        u = done.usage
        print(json.dumps({"text": done.text, "finish_reason": done.finish_reason,
                          "usage": {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
                                    "total_tokens": u.total_tokens, "audio_seconds": round(u.audio_seconds, 3)}},
                         ensure_ascii=False))


def _load(model: str, dtype: str, device: str, quiet: bool):
    from .api import load

    t0 = time.perf_counter()
    with err.status(f"loading {model}", spinner="dots") if not quiet else _nullcontext():
        loaded = load(model, dtype=dtype, device=device)
    if not quiet:
        err.print(f"loaded {model} ({loaded.source.family}, {loaded.source.layout} layout) "
                  f"in {time.perf_counter() - t0:.1f} s", highlight=False)
    return loaded


def _run_text(events, stream: bool, quiet: bool):
    """Print token deltas as they come (text mode) and a tokens/s summary on stderr; return the Done event."""
    from .voxtral.pipeline import Done, Token

    done = None
    status = err.status("encoding audio and prefilling", spinner="dots") if not quiet else _nullcontext()
    with status:
        first = True
        for event in events:
            if isinstance(event, Token):
                if first and not quiet:
                    status.stop()
                first = False
                if stream:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
            elif isinstance(event, Done):
                done = event
    if stream:
        sys.stdout.write("\n")
    if not quiet and done is not None:
        u = done.usage
        decode_tps = (u.completion_tokens - 1) / u.decode_s if u.completion_tokens > 1 and u.decode_s > 0 else 0.0
        err.print(f"{u.audio_seconds:.1f} s audio, {u.prompt_tokens} prompt tokens: encode {u.encode_s:.2f} s, "
                  f"prefill {u.prefill_s:.2f} s, {u.completion_tokens} tokens at {decode_tps:.1f} tok/s "
                  f"({done.finish_reason})", highlight=False)
    return done


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def stop(self):
        pass


def main():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
