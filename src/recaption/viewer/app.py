"""The `recap view` web app (Starlette): one page, its script and stylesheet, and a read-only JSON
API over the rows and their images; its safety rules: docs/view.md ("Safe by default")."""

from __future__ import annotations

import json
import math
from importlib import resources

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .images import FULL_SIDE, THUMBNAIL_SIDES, Images
from .rows import MAX_PER_PAGE, Query, QueryError, Rows

# The page, its script and stylesheet: the only files the app serves by name.
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
READS = ("GET", "HEAD")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]", "::1")


class ReadOnly:
    """ASGI middleware: GET and HEAD pass; any other method is 405 before routing; every answer
    gets the security headers."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            if scope["type"] == "websocket":  # nothing here speaks websocket
                await send({"type": "websocket.close", "code": 1008})
                return
            await self.app(scope, receive, send)
            return
        if scope["method"] not in READS:
            response = JSONResponse({"error": "recap view is read-only: only GET and HEAD"}, status_code=405,
                                    headers={"Allow": "GET, HEAD", **SECURITY_HEADERS})
            await response(scope, receive, send)
            return
        if _from_another_site(scope):
            response = JSONResponse({"error": "recap view answers its own page only, not requests another "
                                     "site's page makes"}, status_code=403, headers=SECURITY_HEADERS)
            await response(scope, receive, send)
            return

        async def with_headers(message):
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()
                         if k.lower().encode() not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _from_another_site(scope) -> bool:
    """A request a page of another site made (an <img> or fetch pointing here: its Host is ours,
    so the Host check passes): the browser says so in Sec-Fetch-Site, or in an Origin that is not
    this server's. curl and the page's own requests send neither, or say same-origin / none."""
    headers = {k.lower(): v for k, v in scope.get("headers", [])}
    site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
    if site in ("cross-site", "same-site"):
        return True
    origin = headers.get(b"origin")
    if origin is None:
        return False
    host = headers.get(b"host", b"").decode("latin-1").lower()
    return origin.decode("latin-1").lower().split("://", 1)[-1] != host  # ("null": an opaque origin)


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _json(payload) -> Response:
    return Response(json.dumps(payload, default=str, allow_nan=False), media_type="application/json")


def parse_query(params, rows: Rows) -> Query:
    """A Query from the page's parameters: q, in (repeatable), status (repeatable), flag=COL:1|0,
    min.COL / max.COL, where, sort, order=asc|desc, page, per. QueryError for a malformed one."""
    flags = {}
    for spec in params.getlist("flag"):
        column, _, value = spec.partition(":")
        if value not in ("0", "1"):
            raise QueryError(f"flag={spec!r}: give COLUMN:1 (set) or COLUMN:0 (not set)")
        flags[column] = value == "1"
    ranges: dict[str, list] = {}
    for name, value in params.multi_items():
        bound, _, column = name.partition(".")
        if bound in ("min", "max") and column and value.strip():
            try:
                number = float(value)
            except ValueError:
                raise QueryError(f"{name}={value!r}: not a number") from None
            if not math.isfinite(number):  # nan / inf would not survive as a `recap filter` condition
                raise QueryError(f"{name}={value!r}: give a finite number")
            if number.is_integer() and abs(number) < 2**53:
                number = int(number)
            ranges.setdefault(column, [None, None])[0 if bound == "min" else 1] = number
    try:
        page, per = int(params.get("page", 0) or 0), int(params.get("per", 48) or 48)
    except ValueError:
        raise QueryError("page and per are whole numbers") from None
    page = min(page, MAX_PAGE)  # past any output's last page; keeps the offset a 64-bit number
    order = params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise QueryError(f"order={order!r}: asc or desc")
    return Query(search=params.get("q", ""), search_in=[c for c in params.getlist("in") if c],
                 status=[s for s in params.getlist("status") if s], flags=flags,
                 ranges={c: (lo, hi) for c, (lo, hi) in ranges.items()}, where=params.get("where", ""),
                 sort=params.get("sort", ""), descending=order == "desc", page=max(0, page),
                 per_page=max(1, min(per, MAX_PER_PAGE)))


MAX_PAGE = 10**12


def make_app(output: str, images: list[str] | None = None, *, hosts: list[str] | None = None,
             index_folder: str | None = None) -> Starlette:
    """The app over the caption output folder `output` (NoOutputError when it is not one), its
    images from `images` (tars or folders of them; default: the inputs the shards' stats record).
    `hosts`: the Host names answered (default: the loopback names)."""
    rows = Rows(output)
    pictures = Images(rows.out, rows.names, images, index_folder, rows.files)

    def page(request: Request) -> Response:
        return Response(_asset("index.html"), media_type=ASSETS["index.html"])

    def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return _error("no such file", 404)
        return Response(_asset(name), media_type=ASSETS[name])

    def meta(request: Request) -> Response:
        return _json({**rows.meta(), "images": {name: pictures.has_images(name) for name in rows.names},
                      "image_notes": pictures.notes, "thumbnail_sides": THUMBNAIL_SIDES})

    def listing(request: Request) -> Response:
        try:
            return _json(rows.page(parse_query(request.query_params, rows)))
        except QueryError as exc:
            return _error(str(exc))

    def histograms(request: Request) -> Response:
        try:
            query = parse_query(request.query_params, rows)
            return _json({"histograms": rows.histograms(query), "where": rows.where_text(query)})
        except QueryError as exc:
            return _error(str(exc))

    def detail(request: Request) -> Response:
        shard = request.query_params.get("shard", "")
        try:
            number = int(request.query_params.get("row", ""))
        except ValueError:
            return _error("row: a whole number")
        row = rows.row(shard, number)
        if row is None:
            return _error("no such row", 404)
        member = pictures.member(shard, str(row.get("key")))
        where = {"shard": shard, "row": number, "parquet": rows.files[shard], "tar": pictures.tars.get(shard),
                 "file": pictures.folder_file(shard, str(row.get("key"))),
                 "member": member.name if member else None, "offset": member.offset if member else None,
                 "size": member.size if member else None, "note": pictures.notes.get(shard)}
        return _json({"row": row, "source": where})

    def image(request: Request) -> Response:
        shard, key = request.query_params.get("shard", ""), request.query_params.get("key", "")
        size = request.query_params.get("size", "")
        if shard not in rows.files:
            return _error("no such shard", 404)
        if size and (not size.isdigit() or int(size) not in THUMBNAIL_SIDES):
            return _error(f"size: one of {', '.join(map(str, THUMBNAIL_SIDES))}")
        data = pictures.jpeg(shard, key, int(size) if size else FULL_SIDE)
        if data is None:
            return _error("no image for this row", 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", asset, methods=["GET"]),
        Route("/api/meta", meta, methods=["GET"]),
        Route("/api/rows", listing, methods=["GET"]),
        Route("/api/histograms", histograms, methods=["GET"]),
        Route("/api/row", detail, methods=["GET"]),
        Route("/api/image", image, methods=["GET"]),
    ]
    allowed_hosts = hosts or list(LOOPBACK_NAMES)
    middleware = [Middleware(ReadOnly), Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)]
    app = Starlette(routes=routes, middleware=middleware)
    app.state.rows, app.state.images = rows, pictures
    return app
