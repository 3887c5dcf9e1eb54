"""The web app's HTTP side (Starlette): the page (static files from the package, nothing from a
CDN) and a small JSON API over a `Service`. Every refusal is a JSON `{"error": "..."}` with
status 400 (bad input), 404, 409 (the tab already has a job) or 413 (too large); an unexpected
error is a 500 with one line, and the server keeps serving.

    GET  /                       the page
    GET  /api/info               frame size, attention levels, defaults, presets, examples
    POST /api/upload?name=N      raw audio bytes -> {id, seconds, rate, channels}
    POST /api/example/NAME       a bundled example stored as an upload
    GET  /api/audio/ID           a stored sound
    POST /api/check              validate a request without queueing it
    POST /api/jobs               {client, request} -> {id, position, warnings}
    POST /api/separate           {client, request: {mixture, queries}}: the stems alone
    GET  /api/jobs/ID            state, stage, DDIM step, result
    POST /api/jobs/ID/cancel
    GET  /api/queue              the running and waiting jobs
    GET  /api/gallery            finished jobs, newest first
    GET  /api/files/ID/KIND[?i=] mp4 | png | json | stem (a job's files, by id)
"""

from __future__ import annotations

import contextlib
import json
import traceback
from importlib import resources

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from maestro_jax.webapp.queue import Busy
from maestro_jax.webapp.requests import RequestError
from maestro_jax.webapp.service import Service

STATIC = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
MAX_JSON = 1 << 20


def _static(name: str) -> Response:
    body = resources.files("maestro_jax.webapp").joinpath("static", name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"Cache-Control": "no-store"})


def _error(msg: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": msg}, status_code=status)


async def _read(request: Request, limit: int) -> bytes:
    """The body, refused (RequestError) past `limit` bytes, however it is sent."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(f"the upload is {int(declared) / 2**20:.1f} MiB; the limit is "
                        f"{limit / 2**20:.0f} MiB")  # fmt: skip
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(f"the upload is over the {limit / 2**20:.0f} MiB limit")
        chunks.append(chunk)
    return b"".join(chunks)


class _TooLarge(RequestError):
    pass


async def _json(request: Request):
    try:
        return json.loads(await _read(request, MAX_JSON) or b"null")
    except ValueError as e:
        if isinstance(e, RequestError):
            raise
        raise RequestError(f"the request is not JSON ({e})") from e


def make_app(service: Service) -> Starlette:
    import anyio

    def handler(fn):
        async def wrapped(request: Request) -> Response:
            try:
                return await fn(request)
            except _TooLarge as e:
                return _error(str(e), 413)
            except Busy as e:
                return _error(str(e), 409)
            except RequestError as e:
                return _error(str(e), 404 if str(e).startswith("no job") else 400)
            except Exception as e:  # noqa: BLE001 - one line to the page; serve on
                traceback.print_exc()
                return _error(f"internal error: {type(e).__name__}: {e}"[:300], 500)

        return wrapped

    async def page(request: Request) -> Response:
        return _static("index.html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        return _static(name) if name in STATIC else _error("not found", 404)

    async def info(request: Request) -> Response:
        return JSONResponse({**service.info(), "examples": service.examples()})

    async def upload(request: Request) -> Response:
        data = await _read(request, service.store.limits.max_bytes)
        name = request.query_params.get("name", "")
        return JSONResponse(await anyio.to_thread.run_sync(service.store.add, data, name))

    async def example(request: Request) -> Response:
        name = request.path_params["name"]
        return JSONResponse(await anyio.to_thread.run_sync(service.example, name))

    async def audio(request: Request) -> Response:
        return FileResponse(service.store.path_of(request.path_params["id"]))

    async def check(request: Request) -> Response:
        body = await _json(request)
        return JSONResponse(await anyio.to_thread.run_sync(service.check, body))

    async def _client_request(request: Request, method) -> Response:
        """A {client, request} JSON body handed to `method(request, client)` off the loop."""
        body = await _json(request)
        if not isinstance(body, dict):
            raise RequestError("the request must be a JSON object {client, request}")
        out = await anyio.to_thread.run_sync(method, body.get("request"), body.get("client"))
        return JSONResponse(out)

    async def submit(request: Request) -> Response:
        return await _client_request(request, service.submit)

    async def separate(request: Request) -> Response:
        return await _client_request(request, service.separate)

    async def job(request: Request) -> Response:
        view = service.queue.get(request.path_params["id"])
        return JSONResponse(view) if view else _error("no such job", 404)

    async def cancel(request: Request) -> Response:
        return JSONResponse({"cancelled": service.queue.cancel(request.path_params["id"])})

    async def queue(request: Request) -> Response:
        return JSONResponse(service.queue.snapshot())

    async def gallery(request: Request) -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(service.gallery))

    async def download(request: Request) -> Response:
        job_id, kind = request.path_params["id"], request.path_params["kind"]
        try:
            index = int(request.query_params.get("i", "0"))
        except ValueError as e:
            raise RequestError("i: a stem index") from e
        path = service.file_of(job_id, kind, index)
        return FileResponse(path, filename=path.name if kind != "png" else None)

    routes = [
        Route("/", handler(page)),
        Route("/static/{name}", handler(static)),
        Route("/api/info", handler(info)),
        Route("/api/upload", handler(upload), methods=["POST"]),
        Route("/api/example/{name}", handler(example), methods=["POST"]),
        Route("/api/audio/{id}", handler(audio)),
        Route("/api/check", handler(check), methods=["POST"]),
        Route("/api/jobs", handler(submit), methods=["POST"]),
        Route("/api/separate", handler(separate), methods=["POST"]),
        Route("/api/jobs/{id}", handler(job)),
        Route("/api/jobs/{id}/cancel", handler(cancel), methods=["POST"]),
        Route("/api/queue", handler(queue)),
        Route("/api/gallery", handler(gallery)),
        Route("/api/files/{id}/{kind}", handler(download)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        service.close()

    return Starlette(routes=routes, lifespan=lifespan)


class Served:
    """A uvicorn server for `app` on host:port in a background thread (the command runs it in
    the foreground instead); tests start one on a free port and stop it at the end."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket
        import threading

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self.thread.start()
        import time

        while not self.server.started and self.thread.is_alive():
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
