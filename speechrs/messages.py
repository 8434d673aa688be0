"""OpenAI-style chat messages -> the pipeline's (role, [str | Audio]) form. Shared by the Python API and server."""

import base64
import binascii

from speechrs.errors import InvalidRequestError
from speechrs.voxtral.events import Audio


def parse_messages(messages: list[dict], python_parts: bool = True) -> list[tuple[str, list]]:
    """Content is a str or a list of parts: {"type": "text", "text"}, {"type": "audio_url", "audio_url": {"url"}},
    {"type": "input_audio", "input_audio": {"data": base64, "format"}} or, from Python, {"type": "audio", "audio": x}
    with x anything speechrs.audio.decode.load takes (path, URL, bytes, (array, rate)). The server passes
    python_parts=False: a path in an "audio" part would be read without the media policy."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg:
            raise InvalidRequestError(f"messages[{i}] must be an object with a role")
        content = msg.get("content")
        if isinstance(content, str):
            out.append((msg["role"], [content]))
        elif isinstance(content, list):
            parts = [_part(p, f"messages[{i}].content[{j}]", python_parts) for j, p in enumerate(content)]
            out.append((msg["role"], parts))
        else:
            raise InvalidRequestError(f"messages[{i}].content must be a string or a list of parts")
    return out


def _part(part, where: str, python_parts: bool):
    if not isinstance(part, dict):
        raise InvalidRequestError(f"{where} must be an object with a type")
    kind = part.get("type")
    if kind == "text":
        if not isinstance(part.get("text"), str):
            raise InvalidRequestError(f"{where}.text must be a string")
        return part["text"]
    if kind == "audio":
        if not python_parts:
            raise InvalidRequestError(
                f"{where}: the 'audio' part is for the Python API; over HTTP send audio_url or input_audio", where
            )
        if part.get("audio") is None:
            raise InvalidRequestError(f"{where}.audio must be audio (a path, URL, bytes or (samples, rate))")
        return Audio(part["audio"])
    if kind == "audio_url":
        url = part.get("audio_url")
        url = url.get("url") if isinstance(url, dict) else url
        if not isinstance(url, str):
            raise InvalidRequestError(f"{where}.audio_url.url must be a string")
        return Audio(url)
    if kind == "input_audio":
        spec = part.get("input_audio") or {}
        try:
            return Audio(base64.b64decode(spec["data"], validate=True))
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise InvalidRequestError(f"{where}.input_audio.data must be base64-encoded audio") from None
    raise InvalidRequestError(f"{where}: unsupported content part type '{kind}'; use text, audio_url or input_audio")
