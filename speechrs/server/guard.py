"""What stands between the routes and a browser or a network: Host names, content types, an API key, CORS.

A server on loopback is still reachable from every web page the user opens: a cross-site page can send a
CORS-simple POST (text/plain, no preflight), and a DNS-rebinding page can talk to 127.0.0.1 under its own host
name and read the answers. So:
- the Host header must name a loopback address, the address the server is bound to, or an --allowed-host (421);
- JSON routes take application/json only (415), which a cross-site page cannot send without a preflight;
- CORS headers are sent only for the origins given with --cors-origin;
- with an API key (--api-key or SPEECHRS_API_KEY) every /v1 route wants `Authorization: Bearer KEY` (401),
  compared in constant time; /health stays open.
"""

import hmac
import ipaddress
from dataclasses import dataclass

from aiohttp import web

from speechrs.server import openai_api as oa

JSON_ROUTES = ("/v1/chat/completions", "/v1/audio/speech")
CORS_HEADERS = web.RequestKey("cors_headers", dict)  # the CORS headers this request's origin gets
LOOPBACK_NAMES = ("localhost", "localhost.")


@dataclass(frozen=True)
class Security:
    api_key: str | None = None
    allowed_hosts: tuple[str, ...] = ()  # Host names or addresses beyond loopback; "*" allows any
    cors_origins: tuple[str, ...] = ()  # e.g. "http://localhost:5173"; "*" allows any origin


def host_name(host_header: str) -> str:
    """'example.com:1234' -> 'example.com'; '[::1]:1234' -> '::1'; lower case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _error(status: int, message: str, code: str, headers: dict | None = None) -> web.Response:
    return web.json_response(
        oa.error_body(message, "invalid_request_error", None, code), status=status, headers=headers
    )


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: every response, streamed ones included, gets its request's CORS headers."""
    response.headers.update(request.get(CORS_HEADERS, {}))


def make_guard(security: Security, bound_host: str | None = None):
    """The middleware for `security`; `bound_host` (the --host the server listens on) is an allowed Host too,
    unless it is a wildcard address."""
    allowed = {h.lower() for h in security.allowed_hosts}
    if bound_host and bound_host not in ("0.0.0.0", "::", ""):
        allowed.add(host_name(bound_host))
    key = security.api_key.encode() if security.api_key else None

    def cors_headers(request: web.Request) -> dict:
        origin = request.headers.get("Origin")
        if not origin or not ("*" in security.cors_origins or origin in security.cors_origins):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
            "Access-Control-Allow-Headers": "Authorization, Content-Type",
            "Vary": "Origin",
        }

    @web.middleware
    async def guard(request: web.Request, handler):
        host = host_name(request.headers.get("Host", ""))
        if not (is_loopback(host) or host in allowed or "*" in allowed):
            return _error(
                421,
                f"this server does not answer to the host name '{host}'; start it with --allowed-host {host} "
                "if that name is yours",
                "misdirected_request",
            )
        cors = request[CORS_HEADERS] = cors_headers(request)
        if request.method == "OPTIONS" and cors:  # a preflight: answered before the key, which it never carries
            return web.Response(status=204, headers=cors)
        if key is not None and request.path.startswith("/v1"):
            auth = request.headers.get("Authorization", "")
            given = auth[7:].strip().encode() if auth[:7].lower() == "bearer " else b""
            if not hmac.compare_digest(given, key):
                return _error(
                    401,
                    "a valid API key is required: send 'Authorization: Bearer <key>'",
                    "invalid_api_key",
                    {"WWW-Authenticate": "Bearer"},
                )
        if request.method == "POST" and request.path in JSON_ROUTES and request.content_type != "application/json":
            return _error(
                415, f"send the body as application/json, not '{request.content_type}'", "unsupported_media_type"
            )
        return await handler(request)

    return guard
