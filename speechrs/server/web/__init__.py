"""The page `speechrs serve` answers at `/`: static files shipped in this package (no CDN, no build step), which
use only the server's public API. `--no-ui` leaves these routes out."""

from pathlib import Path

from aiohttp import web

FILES = {"app.js": "text/javascript", "style.css": "text/css", "favicon.svg": "image/svg+xml"}
HERE = Path(__file__).parent
# the page loads nothing from elsewhere and talks only to this server; blob: for the WAV it builds (played and
# read back)
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; media-src 'self' blob:; connect-src 'self' blob:; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def index(request: web.Request) -> web.Response:
    return _file("index.html", "text/html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES:  # a fixed list: nothing else under the package is reachable
        raise web.HTTPNotFound(text=f"no file '{name[:60]}' in the page's assets")
    return _file(name, FILES[name])


def _file(name: str, content_type: str) -> web.Response:
    return web.Response(body=(HERE / name).read_bytes(), content_type=content_type, charset="utf-8", headers=HEADERS)


async def favicon(request: web.Request) -> web.Response:
    """Browsers ask for /favicon.ico whatever the page links: the same icon."""
    return _file("favicon.svg", FILES["favicon.svg"])


def routes() -> list[web.RouteDef]:
    return [web.get("/", index), web.get("/favicon.ico", favicon), web.get("/ui/{name}", asset)]
