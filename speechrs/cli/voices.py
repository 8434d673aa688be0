"""`speechrs voices add|list|remove`: named voices for `speak --voice` and the server's `voice` field."""

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from speechrs.cli.help import Command, Group
from speechrs.errors import SpeechrsError

app = typer.Typer(cls=Group, no_args_is_help=True, help="Named voices for Dia: a reference clip and its transcript.")
err = Console(stderr=True, soft_wrap=True)
VOICES_DIR_HELP = (
    "Where named voices are kept \\[default: $SPEECHRS_VOICES_DIR, else speechrs/voices under ~/.local/share]"
)
VoicesDir = Annotated[Path | None, typer.Option("--voices-dir", help=VOICES_DIR_HELP)]


def _fail(message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def _store(voices_dir: Path | None):
    from speechrs.dia.voice_store import VoiceStore

    return VoiceStore(voices_dir)


@app.command(cls=Command)
def add(
    name: Annotated[str, typer.Argument(help="The voice's name: letters, digits, '_', '-', '.'")],
    clip: Annotated[Path, typer.Argument(help="A 5-10 s recording of the voice (wav, flac, ogg, mp3).")],
    text: Annotated[str, typer.Option("--text", help="What the clip says, with [S1]/[S2] tags.")],
    voices_dir: VoicesDir = None,
):
    """Save CLIP and its transcript as voice NAME (replacing one of that name)."""
    if not clip.is_file():
        _fail(f"audio file not found: {clip}")
    try:
        voice = _store(voices_dir).add(name, str(clip), text)
    except SpeechrsError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot save the voice: {e.strerror} ({e.filename})")
    err.print(f"added voice '{voice.name}' ({voice.seconds:.1f} s) in {voice.directory}", highlight=False)


@app.command("list", cls=Command)
def list_voices(voices_dir: VoicesDir = None):
    """The saved voices: name, length, transcript (one per line on stdout)."""
    store = _store(voices_dir)
    voices = store.list()
    for voice in voices:
        print(f"{voice.name}\t{voice.seconds:.1f} s\t{voice.text}")
    if not voices:
        err.print(f"no voices in {store.directory}; add one with: speechrs voices add NAME clip.wav --text '[S1] ...'")


@app.command(cls=Command)
def remove(name: Annotated[str, typer.Argument(help="The voice to delete.")], voices_dir: VoicesDir = None):
    """Delete voice NAME."""
    try:
        _store(voices_dir).remove(name)
    except SpeechrsError as e:
        _fail(str(e))
    err.print(f"removed voice '{name}'", highlight=False)
