"""What `speechrs transcribe` prints and writes: token deltas as they come, a progress bar over the audio for
segmented work, and the transcript as text, json, verbose_json, srt or vtt (to stdout or a file)."""

import contextlib
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from speechrs import subtitles


def run_transcript(events, stream_stdout: bool, quiet: bool, err: Console):
    """Drive the events; print deltas to stdout when stream_stdout; return the Done event."""
    from speechrs.voxtral.events import Done, Token
    from speechrs.voxtral.transcript import Progress as AudioProgress
    from speechrs.voxtral.transcript import Segment

    done, bar, task, t0 = None, None, None, time.perf_counter()
    status = err.status("encoding audio and prefilling", spinner="dots") if not quiet else contextlib.nullcontext()
    with status, contextlib.ExitStack() as stack:
        for event in events:
            if isinstance(event, AudioProgress) and bar is None and not quiet:
                status.stop()  # type: ignore[union-attr]
                bar = stack.enter_context(
                    Progress(
                        TextColumn("transcribing"),
                        BarColumn(),
                        TextColumn("{task.fields[audio]}"),
                        TimeElapsedColumn(),
                        console=err,
                        transient=True,
                    )
                )
                task = bar.add_task("", total=event.total_s, audio="")
            elif isinstance(event, (Segment, AudioProgress)) and bar is not None and task is not None:
                total = bar.tasks[0].total or 0.0
                # a segment's end is audio transcribed; Progress reaching the total means the rest was silence
                at = event.end if isinstance(event, Segment) else (total if event.done_s >= total else None)
                if at is not None:
                    rate = at / max(time.perf_counter() - t0, 1e-9)
                    bar.update(task, completed=at, audio=f"{at:.0f}/{total:.0f} s of audio, {rate:.2f}x real time")
            elif isinstance(event, Token):
                if not quiet and bar is None:
                    status.stop()  # type: ignore[union-attr]
                if stream_stdout:
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
            elif isinstance(event, Done):
                done = event
    if stream_stdout:
        sys.stdout.write("\n")
    if not quiet and done is not None:
        _summary(done, time.perf_counter() - t0, err)
    return done


def _summary(done, wall_s: float, err: Console) -> None:
    u = done.usage
    decode_tps = (u.completion_tokens - 1) / u.decode_s if u.completion_tokens > 1 and u.decode_s > 0 else 0.0
    n = len(done.segments) if done.segments is not None else 0
    pieces = f" in {n} segment{'' if n == 1 else 's'}" if done.segments is not None else ""
    err.print(
        f"{u.audio_seconds:.1f} s audio{pieces}, {u.prompt_tokens} prompt tokens: encode {u.encode_s:.2f} s, "
        f"prefill {u.prefill_s:.2f} s, {u.completion_tokens} tokens at {decode_tps:.1f} tok/s "
        f"({done.finish_reason}); {wall_s:.1f} s, {u.audio_seconds / max(wall_s, 1e-9):.2f}x real time",
        highlight=False,
    )


def render(done, fmt: str, language: str | None, to_language: str | None) -> str:
    """The transcript in `fmt` (subtitles.TRANSCRIPT_FORMATS)."""
    from speechrs.server.openai_api import verbose_transcript

    if fmt == "text":
        return done.text + "\n"
    if fmt in ("srt", "vtt"):
        return subtitles.timed_text(fmt, done.segments or [])
    if fmt == "verbose_json":
        return json.dumps(verbose_transcript(done, language, to_language), ensure_ascii=False) + "\n"
    u = done.usage
    usage = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "audio_seconds": round(u.audio_seconds, 3),
    }
    return (
        json.dumps({"text": done.text, "finish_reason": done.finish_reason, "usage": usage}, ensure_ascii=False) + "\n"
    )


def write(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
