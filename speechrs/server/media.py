"""Where request audio comes from: data: URLs, http(s) fetches and file:// paths, under one policy.

http(s): a size cap, a timeout and a redirect limit; hosts that resolve to loopback, private, link-local or
otherwise non-global addresses are refused (checked again at every redirect). file://: allowed when the server
listens on a loopback address, or for paths under directories given with --allowed-local-media-path.
"""

import asyncio
import base64
import binascii
import io
import ipaddress
import os
import socket
import stat
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from speechrs.audio.decode import data_url_bytes, file_url_path
from speechrs.errors import AudioError, InvalidRequestError


@dataclass(frozen=True)
class MediaPolicy:
    max_bytes: int = 25 * 2**20
    timeout_s: float = 30.0
    max_redirects: int = 3
    allow_local_files: bool = False  # any file:// path (the server listens on loopback)
    allowed_dirs: tuple[Path, ...] = field(default_factory=tuple)  # file:// under these
    allow_private_hosts: bool = False  # http(s) to loopback/private addresses (trusted networks only)


async def fetch_audio(url: str, policy: MediaPolicy, param: str) -> bytes:
    """The bytes an audio URL points to, or a 4xx-class error that says what to change."""
    if url.startswith("data:"):
        try:
            return _capped(data_url_bytes(url), policy, param)
        except AudioError as e:
            raise InvalidRequestError(str(e), param) from None
    scheme = urllib.parse.urlparse(url).scheme
    if scheme == "file":  # off the event loop: a slow disk or a network mount must not stall other clients
        return await asyncio.to_thread(_read_local, url, policy, param)
    if scheme in ("http", "https"):
        return await _fetch_http(url, policy, param)
    raise InvalidRequestError(
        f"unsupported audio URL scheme '{scheme or url[:20]}': use data:, http(s):// or file://", param
    )


async def fetch_url_or_base64(value: str, policy: MediaPolicy, param: str) -> bytes:
    """A field that holds either an audio URL (fetched as fetch_audio does) or base64-encoded audio."""
    if value.startswith("data:") or "://" in value[:10]:
        return await fetch_audio(value, policy, param)
    try:
        return _capped(base64.b64decode(value, validate=True), policy, param)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(
            f"'{param}' is neither a data:, http(s):// or file:// URL nor base64 audio", param
        ) from None


def _capped(data: bytes, policy: MediaPolicy, param: str) -> bytes:
    if len(data) > policy.max_bytes:
        raise InvalidRequestError(f"audio is {len(data)} bytes; the limit is {policy.max_bytes}", param)
    return data


def _read_local(url: str, policy: MediaPolicy, param: str) -> bytes:
    path = file_url_path(url).resolve()
    allowed = policy.allow_local_files or any(path.is_relative_to(d.resolve()) for d in policy.allowed_dirs)
    if not allowed:
        raise InvalidRequestError(
            "file:// audio is refused: this server does not listen on loopback; start it "
            "with --allowed-local-media-path DIR to allow files under DIR",
            param,
        )
    # One answer for a missing, unreadable, special, too large or non-audio file, so what a client learns of the
    # server's files is no more than "not usable audio". O_NONBLOCK: opening a FIFO would otherwise wait for a
    # writer; fstat then refuses it, devices and directories before a byte is read (file:///dev/zero would
    # stream forever), the cap holds while reading, and the header is checked here, not later by the decoder.
    refused = AudioError(
        f"cannot read audio from {url[:200]}: no regular, readable audio file of at most {policy.max_bytes} bytes"
    )
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        raise refused from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise refused
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(policy.max_bytes + 1)
    except OSError:
        raise refused from None
    finally:
        os.close(fd)
    if len(data) > policy.max_bytes or not _readable_audio_header(data):
        raise refused
    return data


def _readable_audio_header(data: bytes) -> bool:
    """Whether libsndfile (audio.decode's reader) recognises the header; nothing is decoded."""
    try:
        sf.info(io.BytesIO(data))
        return True
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return False


async def _check_host(host: str, port: int, policy: MediaPolicy, param: str) -> None:
    if policy.allow_private_hosts:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise InvalidRequestError(f"cannot resolve host '{host}'", param) from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            raise InvalidRequestError(
                f"refusing to fetch audio from '{host}' ({addr}): loopback, private and "
                "link-local addresses are not allowed",
                param,
            )


async def _fetch_http(url: str, policy: MediaPolicy, param: str) -> bytes:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=policy.timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(policy.max_redirects + 1):
            parts = urllib.parse.urlparse(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidRequestError(f"refusing to follow a redirect to '{url[:80]}'", param)
            await _check_host(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), policy, param)
            try:
                async with session.get(url, allow_redirects=False) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = urllib.parse.urljoin(url, resp.headers["Location"])
                        continue
                    if resp.status != 200:
                        raise InvalidRequestError(
                            f"fetching audio from {parts.hostname} gave HTTP {resp.status}", param
                        )
                    data = bytearray()
                    async for chunk in resp.content.iter_chunked(1 << 16):
                        data += chunk
                        if len(data) > policy.max_bytes:
                            raise InvalidRequestError(
                                f"audio at {parts.hostname} exceeds the {policy.max_bytes}-byte limit", param
                            )
                    return bytes(data)
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                raise InvalidRequestError(
                    f"cannot fetch audio from {parts.hostname}: {e or 'timeout'}", param
                ) from None
        raise InvalidRequestError(f"more than {policy.max_redirects} redirects fetching audio", param)
