"""speechrs command line: results on stdout, progress and errors on stderr, non-zero exit on failure."""

import itertools
import logging
import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from speechrs import settings
from speechrs.cli.help import Command, Group
from speechrs.cli.quantize import quantize as quantize_command
from speechrs.cli.voices import VOICES_DIR_HELP, VoicesDir
from speechrs.cli.voices import app as voices_app
from speechrs.errors import InvalidRequestError, SpeechrsError
from speechrs.linear.kinds import CHOICES

if TYPE_CHECKING:  # torch and the models load when a command runs, not when the CLI starts
    from speechrs.api import DiaModel, VoxtralModel

app = typer.Typer(
    cls=Group,
    add_completion=False,
    no_args_is_help=True,
    help="Local speech models: Voxtral transcription, Dia dialogue text-to-speech.",
)
err = Console(stderr=True, soft_wrap=True)  # one message, one line: no hard wraps
app.add_typer(voices_app, name="voices")
app.command("quantize", cls=Command)(quantize_command)


class OutputFormat(str, Enum):
    text = "text"
    json = "json"
    verbose_json = "verbose_json"
    srt = "srt"
    vtt = "vtt"


class AudioFormat(str, Enum):
    wav = "wav"
    pcm = "pcm"
    mp3 = "mp3"
    opus = "opus"
    aac = "aac"
    flac = "flac"


AUDIO_SUFFIXES = {".wav": "wav", ".pcm": "pcm", ".raw": "pcm", ".mp3": "mp3", ".opus": "opus", ".ogg": "opus"}
AUDIO_SUFFIXES |= {".aac": "aac", ".flac": "flac"}


Quantize = Enum("Quantize", {kind: kind for kind in CHOICES}, type=str)  # type: ignore[misc]  # one spelling
NO_QUANTIZATION = Quantize("none")


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


DTYPE_HELP = "Weights dtype; auto picks the path for the device (said at load)."
QUANTIZE_HELP = (
    "Weight-only int8 (per channel) or int4 (groups of 32) decoder linears, quantized at load; the model's encoder "
    "goes int8 with either (a `speechrs quantize` directory brings its own)."
)


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False):
    if version:
        from speechrs import __version__

        print(__version__)
        raise typer.Exit()


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command(cls=Command)
def transcribe(
    audio: Annotated[Path, typer.Argument(help="Audio file of any length: wav, flac, ogg or mp3, any rate/channels.")],
    model: Annotated[
        str, typer.Option("-m", "--model", help="Hub id or local directory.")
    ] = "mistralai/Voxtral-Mini-3B-2507",
    language: Annotated[str | None, typer.Option(help="ISO 639-1 code, e.g. en; omit to let the model choose.")] = None,
    translate_to: Annotated[
        str | None, typer.Option(help="Translate the speech into this language (code or name, e.g. fr).")
    ] = None,
    output_format: Annotated[
        OutputFormat | None,
        typer.Option(
            "--format",
            help="text, json (with usage), verbose_json (segments with start/end), srt or vtt "
            "\\[default: from -o's suffix (.txt .json .srt .vtt), else text]",
        ),
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the transcript here.")] = None,
    max_segment_seconds: Annotated[
        float, typer.Option(help="Longest segment (1-30 s); shorter gives shorter subtitle cues at more compute.")
    ] = 30.0,
    max_tokens: Annotated[
        int | None, typer.Option(help="Most tokens to generate \\[default: one per audio token]")
    ] = None,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus mass kept when sampling.")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    dtype: Annotated[DType, typer.Option(help=DTYPE_HELP)] = DType.auto,
    quantize: Annotated[Quantize, typer.Option(help=QUANTIZE_HELP)] = NO_QUANTIZATION,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")] = "auto",
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress on stderr.")] = False,
):
    """Transcribe (or translate) an audio file with Voxtral; the text goes to stdout or -o FILE.

    Subtitles, verbose_json and audio too long for one prompt go segment by segment (split at pauses)."""
    from speechrs import subtitles
    from speechrs.api import VoxtralModel
    from speechrs.cli.transcribe import render, run_transcript, write

    if output is not None and output_format is None and output.suffix.lower() not in subtitles.SUFFIX_FORMATS:
        _fail(f"cannot tell the format from '{output.name}': use .txt, .json, .srt or .vtt, or give --format")
    fmt = subtitles.format_for(output, output_format.value if output_format else None)
    options = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed)
    try:  # what can be checked without the model, before it loads
        from speechrs.api import split_options
        from speechrs.audio.decode import open_stream
        from speechrs.voxtral.events import GenerationOptions
        from speechrs.voxtral.transcript import target_language

        GenerationOptions(**options).validate()  # type: ignore[arg-type]
        if translate_to:
            target_language(translate_to)
        split_options(max_segment_seconds)
        open_stream(audio, 16000)  # reads the header only: a file that does not decode is refused now
        _check_family(model, "voxtral", "transcribe needs audio in, text out", quiet)
    except SpeechrsError as e:
        _fail(str(e))
    try:
        loaded = _load(model, dtype.value, device, quiet, quantize=quantize.value)
        assert isinstance(loaded, VoxtralModel)
        timestamps = fmt in ("verbose_json", "srt", "vtt")
        if translate_to:
            events = loaded.translate_stream(str(audio), translate_to, timestamps, max_segment_seconds, **options)
        else:
            events = loaded.transcribe_stream(str(audio), language, timestamps, max_segment_seconds, **options)
        done = run_transcript(events, stream_stdout=fmt == "text" and output is None, quiet=quiet, err=err)
        if done is None:
            _fail("the transcription ended without a result")
        if not (fmt == "text" and output is None):  # streamed text is on stdout already
            write(render(done, fmt, language, translate_to), output)
    except SpeechrsError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write {output}: {e.strerror}")
    if output is not None and not quiet:
        err.print(f"wrote {output} ({fmt})", highlight=False)


@app.command(cls=Command)
def speak(
    text: Annotated[str, typer.Argument(help="What to say, with [S1]/[S2] speaker tags; '-' reads stdin.")] = "-",
    output: Annotated[Path, typer.Option("-o", "--output", help="Where to write the audio; - is stdout.")] = Path(
        "out.wav"
    ),
    text_file: Annotated[Path | None, typer.Option("--file", help="Read the text from this file instead.")] = None,
    model: Annotated[str, typer.Option("-m", "--model", help="Hub id or local directory.")] = "nari-labs/Dia-1.6B",
    dac: Annotated[
        str | None, typer.Option(help="DAC 44 kHz hub id or directory \\[default: the generation's]")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 is greedy \\[default: 1.3 v0.1, 1.8 0626]")] = None,
    cfg_scale: Annotated[float | None, typer.Option(help="Classifier-free guidance \\[default: 3]")] = None,
    top_p: Annotated[float | None, typer.Option(help="\\[default: 0.95 v0.1, 0.90 0626]")] = None,
    top_k: Annotated[int | None, typer.Option(help="CFG filter top-k \\[default: 35 v0.1, 45 0626]")] = None,
    max_tokens: Annotated[
        int | None, typer.Option(help="Decoder steps, 86 per second of audio \\[default: the config's audio_length]")
    ] = None,
    normalize: Annotated[
        bool | None, typer.Option(help="Loudness to -14 LUFS, then tanh \\[default: on, off with --stream]")
    ] = None,
    speed: Annotated[
        float | None, typer.Option(help="0.25-4.0: faster or slower speech at the same pitch \\[default: 1]")
    ] = None,
    voice: Annotated[str | None, typer.Option(help="A named voice (speechrs voices add/list).")] = None,
    voices_dir: VoicesDir = None,
    ref_audio: Annotated[
        Path | None, typer.Option(help="Clone this voice: a 5-10 s recording (with --ref-text)")
    ] = None,
    ref_text: Annotated[str | None, typer.Option(help="The transcript of --ref-audio, with [S1]/[S2] tags")] = None,
    stream: Annotated[
        bool,
        typer.Option(
            help="Write the audio as it is made (not loudness-normalised), e.g. "
            "--format pcm -o - | aplay -f S16_LE -r 44100"
        ),
    ] = False,
    output_format: Annotated[
        AudioFormat | None,
        typer.Option(
            "--format",
            help="wav (16-bit), pcm (raw s16le), mp3, opus, aac or flac \\[default: from -o's suffix, else wav]",
        ),
    ] = None,
    dtype: Annotated[DType, typer.Option(help=DTYPE_HELP)] = DType.auto,
    quantize: Annotated[Quantize, typer.Option(help=QUANTIZE_HELP)] = NO_QUANTIZATION,
    device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")] = "auto",
    captions: Annotated[
        Path | None, typer.Option(help="Also write captions, one per piece of the script: .srt or .vtt")
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No progress on stderr.")] = False,
):
    """Speak TEXT with Dia and write a 44.1 kHz mono file.

    Text of any length: a long script is spoken piece by piece (speaker turns, then sentences), each piece in
    the voices of the one before."""
    from speechrs import subtitles
    from speechrs.api import DiaModel
    from speechrs.cli.speak import finish_wav_sizes, open_output, run_speech
    from speechrs.dia.voice_store import VoiceStore

    if captions is not None and captions.suffix.lower() not in (".srt", ".vtt"):
        _fail(f"--captions takes a .srt or .vtt file, not '{captions.name}'")
    fmt = _speech_format(output, output_format.value if output_format else None)
    if stream and fmt not in ("wav", "pcm"):
        _fail(f"--stream writes wav or pcm as it is made; {fmt} is encoded whole: drop --stream")
    text = _script_text(text, text_file)
    store = VoiceStore(voices_dir) if voices_dir is not None else None
    try:  # what can be checked without the model, before it loads
        from speechrs.audio.decode import open_stream
        from speechrs.dia.events import SpeakOptions
        from speechrs.dia.pipeline import check_reference
        from speechrs.dia.script import check_script

        check_script(text)
        SpeakOptions(max_tokens, temperature, top_p, top_k, cfg_scale, seed, normalize, speed).check()  # in order
        check_reference(voice, ref_audio, ref_text)
        if voice is not None:
            (store or VoiceStore()).get(voice)
        if ref_audio is not None:
            open_stream(ref_audio, 44100)  # reads the header only: a file that does not decode is refused now
        _check_family(model, "dia", "speak needs text in, speech out", quiet)
    except SpeechrsError as e:
        _fail(str(e))
    if speed is not None and speed != 1.0:
        from speechrs.dia.tempo import warm_up

        with (
            err.status("preparing --speed's time stretch (librosa's first use)", spinner="dots")
            if not quiet
            else _nullcontext()
        ):
            warm_up()
    try:
        loaded = _load(model, dtype.value, device, quiet, dac=dac, quantize=quantize.value)
        assert isinstance(loaded, DiaModel)
        if store is not None:
            loaded.voices = store
        events = loaded.speak_stream(
            text,
            stream_audio=stream,
            voice=voice,
            ref_audio=ref_audio,
            ref_text=ref_text,
            seed=seed,
            temperature=temperature,
            cfg_scale=cfg_scale,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            normalize=normalize,
            speed=speed,
        )
        from speechrs.audio.decode import to_s16le, wav_stream_header

        wav = fmt == "wav"
        if stream:
            events = iter(events)
            events = itertools.chain([next(events)], events)  # request errors surface before the output is opened
            with open_output(output) as out:
                if wav:
                    out.write(wav_stream_header(loaded.pipeline.codec.cfg.sample_rate))
                result = run_speech(events, quiet, err, on_audio=lambda pcm: (out.write(to_s16le(pcm)), out.flush()))
                if wav and out.seekable():  # a file, not a pipe: write the real sizes
                    finish_wav_sizes(out)
        else:
            result = run_speech(events, quiet, err)
            from speechrs.audio.encode import speech_bytes

            data = speech_bytes(result.pcm, result.sample_rate, fmt)[0]
            with open_output(output) as out:
                out.write(data)
        if captions is not None:
            captions.write_text(subtitles.timed_text(captions.suffix.lower()[1:], result.segments), encoding="utf-8")
    except SpeechrsError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write {e.filename or output}: {e.strerror}")
    if not quiet:
        pieces = f" in {len(result.segments)} pieces" if len(result.segments) > 1 else ""
        err.print(
            f"wrote {output} ({result.duration_s:.2f} s{pieces}, {result.sample_rate} Hz mono, {fmt})"
            + (f" and {captions}" if captions is not None else ""),
            highlight=False,
        )


MODELS, NETWORK, LIMITS, MEDIA = "Models and compute", "Network, security and logs", "Limits", "Media and voices"


class LogLevel(str, Enum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


@app.command(cls=Command)
def serve(
    model: Annotated[
        list[str],
        typer.Option("-m", "--model", help="Hub id or directory; repeat to serve several.", rich_help_panel=MODELS),
    ],
    served_model_name: Annotated[
        list[str] | None,
        typer.Option(
            help="The id clients use for each -m, in the same order \\[default: the directory's name, or the hub id]",
            rich_help_panel=MODELS,
        ),
    ] = None,
    dac: Annotated[
        str | None, typer.Option(help="DAC for Dia models \\[default: the generation's]", rich_help_panel=MODELS)
    ] = None,
    dtype: Annotated[DType, typer.Option(help=DTYPE_HELP, rich_help_panel=MODELS)] = DType.auto,
    quantize: Annotated[
        list[Quantize] | None,
        typer.Option(
            help=QUANTIZE_HELP + " Once for every model, or once per -m, in the same order \\[default: none]",
            rich_help_panel=MODELS,
        ),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.", rich_help_panel=MODELS)
    ] = "auto",
    no_warmup: Annotated[
        bool,
        typer.Option("--no-warmup", help="Skip the one tiny request per model before serving.", rich_help_panel=MODELS),
    ] = False,
    host: Annotated[str, typer.Option(help="Address to listen on.", rich_help_panel=NETWORK)] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", rich_help_panel=NETWORK)] = 1234,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar=settings.API_KEY,
            help="Require 'Authorization: Bearer KEY' on every /v1 route.",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="A Host name clients may use besides loopback and --host (repeatable; * for any).",
            rich_help_panel=NETWORK,
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(help="Send CORS headers to this browser origin (repeatable; * for any).", rich_help_panel=NETWORK),
    ] = None,
    no_ui: Annotated[
        bool,
        typer.Option("--no-ui", help="Do not serve the page at / (speak and transcribe).", rich_help_panel=NETWORK),
    ] = False,
    log_level: Annotated[
        LogLevel, typer.Option(help="debug, info (one line per request), warning or error.", rich_help_panel=NETWORK)
    ] = LogLevel.info,
    no_access_log: Annotated[
        bool,
        typer.Option(
            "--no-access-log",
            help="No line per request (they go to stderr at --log-level info).",
            rich_help_panel=NETWORK,
        ),
    ] = False,
    max_batch: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Requests of one model decoded together \\[default: 4 on a CPU, 8 on MPS, 16 on CUDA]",
            rich_help_panel=LIMITS,
        ),
    ] = None,
    max_queue: Annotated[
        int,
        typer.Option(min=0, help="Requests that may wait beyond a full batch; more get a 429.", rich_help_panel=LIMITS),
    ] = 16,
    request_timeout: Annotated[
        float | None,
        typer.Option(
            min=1,
            help="Seconds a request may run, waiting included; then a 408 \\[default: no limit]",
            rich_help_panel=LIMITS,
        ),
    ] = None,
    body_timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds a client has to send its request body; then a 408.", rich_help_panel=LIMITS
        ),
    ] = 30.0,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            min=0,
            help="On SIGTERM: seconds the running request may finish; queued ones get 503.",
            rich_help_panel=LIMITS,
        ),
    ] = 30.0,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest request body or fetched audio, MiB.", rich_help_panel=LIMITS)
    ] = 25.0,
    max_audio_seconds: Annotated[
        float,
        typer.Option(
            help="Longest audio accepted per input (long audio is transcribed in segments).", rich_help_panel=LIMITS
        ),
    ] = 14400.0,
    max_input_chars: Annotated[
        int,
        typer.Option(
            min=1,
            help="Longest text accepted per speech request (long scripts go piece by piece).",
            rich_help_panel=LIMITS,
        ),
    ] = 20000,
    allowed_local_media_path: Annotated[
        list[Path] | None,
        typer.Option(
            help="Allow file:// audio under this directory (repeatable); any path is allowed on loopback hosts.",
            rich_help_panel=MEDIA,
        ),
    ] = None,
    allow_private_media: Annotated[
        bool,
        typer.Option(
            "--allow-private-media",
            help="Let http(s) audio URLs reach loopback/private addresses (trusted networks only).",
            rich_help_panel=MEDIA,
        ),
    ] = False,
    voices_dir: Annotated[
        Path | None, typer.Option("--voices-dir", help=VOICES_DIR_HELP, rich_help_panel=MEDIA)
    ] = None,
):
    """Serve the models over an OpenAI-compatible HTTP API, and a page at / to try them in a browser."""
    from speechrs.server.app import run
    from speechrs.server.guard import Security

    per_model = [q.value for q in quantize or [NO_QUANTIZATION]]
    if len(per_model) == 1:
        per_model *= len(model)
    if len(per_model) != len(model):
        _fail(f"--quantize is given {len(per_model)} times for {len(model)} models; give it once or once per -m", 2)
    try:
        run(
            model,
            served_names=served_model_name or None,
            log_level=log_level.value,
            access_log=not no_access_log,
            quantize=per_model,
            max_queue=max_queue,
            max_batch=max_batch,
            request_timeout_s=request_timeout,
            body_timeout_s=body_timeout,
            shutdown_grace_s=shutdown_grace,
            ui=not no_ui,
            voices_dir=voices_dir,
            security=Security(api_key or None, tuple(allowed_host or ()), tuple(cors_origin or ())),
            host=host,
            port=port,
            dtype=dtype.value,
            device=device,
            dac=dac,
            max_upload_bytes=int(max_upload_mb * 2**20),
            max_audio_s=max_audio_seconds,
            max_input_chars=max_input_chars,
            allowed_dirs=tuple(allowed_local_media_path or ()),
            allow_private_hosts=allow_private_media,
            warmup=not no_warmup,
            log=lambda msg: err.print(msg, highlight=False),
        )
    except SpeechrsError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot listen on {host}:{port}: {e.strerror}")


def _speech_format(output: Path, given: str | None) -> str:
    """--format, else -o's suffix (stdout: wav); an unknown suffix is refused rather than written as WAV."""
    if given is not None:
        return given
    if str(output) == "-":
        return "wav"
    fmt = AUDIO_SUFFIXES.get(output.suffix.lower())
    if fmt is None:
        suffixes = ", ".join(sorted(AUDIO_SUFFIXES))
        _fail(f"cannot tell the audio format from '{output.name}': use {suffixes}, or give --format")
    return fmt


def _script_text(text: str, text_file: Path | None) -> str:
    """TEXT, --file's text, or standard input for '-' (refused at a terminal, where nothing would come)."""
    if text_file is not None:
        try:
            return text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"cannot read text file {text_file}: {e}")
    if text != "-":
        return text
    if sys.stdin is None or sys.stdin.isatty():
        _fail("no text to speak: give it as TEXT, with --file, or on standard input (echo '[S1] Hi.' | speechrs speak)")
    return sys.stdin.read()


def _check_family(model: str, family: str, why: str, quiet: bool) -> None:
    """The model's family from its files, before anything loads (a hub id not yet cached is fetched here, as the
    load would, under a status line)."""
    from speechrs.hub import resolve

    with err.status(f"finding {model}", spinner="dots") if not quiet else _nullcontext():
        found = resolve(model).family
    if found != family:
        names = {"voxtral": "Voxtral", "dia": "Dia"}
        raise InvalidRequestError(f"{model} is a {names.get(found, found)} model, not {names[family]}; {why}")


def _load(
    model: str, dtype: str, device: str, quiet: bool, dac: str | None = None, quantize: str | None = None
) -> "VoxtralModel | DiaModel":
    from speechrs.api import load

    t0 = time.perf_counter()
    with err.status(f"loading {model}", spinner="dots") if not quiet else _nullcontext():
        loaded = load(model, dtype=dtype, device=device, dac=dac, quantize=quantize)
    if not quiet:
        err.print(
            f"loaded {model} ({loaded.source.family}, {loaded.source.layout} layout) "
            f"in {time.perf_counter() - t0:.1f} s; {loaded.plan.summary}",
            highlight=False,
        )
    return loaded


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
