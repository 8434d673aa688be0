"""Timed text out: SubRip (.srt) and WebVTT (.vtt) from anything with start, end (seconds) and text, and the
choice of a transcript format from a file name."""

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

TRANSCRIPT_FORMATS = ("text", "json", "verbose_json", "srt", "vtt")
SUFFIX_FORMATS = {".txt": "text", ".json": "verbose_json", ".srt": "srt", ".vtt": "vtt"}
CONTENT_TYPES = {"text": "text/plain", "srt": "application/x-subrip", "vtt": "text/vtt"}


class Timed(Protocol):
    start: float
    end: float
    text: str


def _clock(seconds: float, decimal: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{decimal}{ms:03d}"


def _cue_text(text: str) -> str:
    # a blank line ends a cue in both formats, and VTT reserves "-->": keep cues to what a player shows as text
    lines = [line.strip() for line in text.replace("-->", "->").splitlines()]
    return "\n".join(line for line in lines if line)


def srt(segments: Iterable[Timed]) -> str:
    cues = [s for s in segments if _cue_text(s.text)]
    return "".join(
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{_cue_text(s.text)}\n\n"
        for i, s in enumerate(cues, start=1)
    )


def vtt(segments: Iterable[Timed]) -> str:
    cues = [s for s in segments if _cue_text(s.text)]
    return "WEBVTT\n\n" + "".join(
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_cue_text(s.text)}\n\n" for s in cues
    )


def timed_text(fmt: str, segments: Iterable[Timed]) -> str:
    """SubRip for "srt", WebVTT for "vtt"."""
    return srt(segments) if fmt == "srt" else vtt(segments)


def format_for(path: Path | None, given: str | None) -> str:
    """The transcript format: the one given, else the output file's suffix, else text."""
    if given:
        return given
    if path is not None and path.suffix.lower() in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[path.suffix.lower()]
    return "text"
