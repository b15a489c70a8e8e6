"""The HTTP side of ``mat-effnet-serve``: a FastAPI app and its uvicorn server.

FastAPI (on Starlette, served by uvicorn) because it is a maintained
framework whose pieces this app needs are built in: multipart uploads
streamed to disk (python-multipart), static files, JSON responses, and an
asyncio server in which a request that waits for the model costs no thread.
Gradio was not used: its page loads fonts and a script from other hosts,
and the page here must work with no outside network.

Routes:

    GET  /                          the page (static/index.html) and its assets under /static
    POST /v1/predict                multipart ``video`` (+ ``window_s``, ``stride_s``,
                                    ``top_k``, ``attention``): waits, answers the JSON
                                    of ``mat-effnet-predict --json``
    POST /v1/jobs                   the same, answered at once with a job id (the page)
    GET  /v1/jobs/{id}              the job's stage, then its answer
    GET  /v1/jobs/{id}/attention.png
    GET  /v1/model                  class names, both preparations and identities
    GET  /healthz                   200 once warmed up (the server listens only then)

Bad input answers 4xx ``{"error": "<one line>"}``: 400 a form without a
video, 413 an upload over ``--max_upload_mb``, 422 a file that is not a
usable video; 503 with ``Retry-After`` past the queue bound.
"""


import asyncio
import logging
import os
import signal
import socket
import time
import uuid

from mat_effnet.common.errors import MatEffNetError, bad_argument
from mat_effnet.webapp import jobs
from mat_effnet.webapp.serve_settings import ServeSettings

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
# Multipart framing and the small form fields, on top of the file itself.
FORM_OVERHEAD = 64 * 1024
_CHUNK = 1 << 20


def create_app(worker: jobs.Worker, settings: ServeSettings, about: dict | None = None):
    """The app around a started `jobs.Worker`; ``about`` is added to ``GET /healthz``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles
    from starlette.concurrency import run_in_threadpool

    app = FastAPI(title="mat-effnet-serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    clf = worker.classifier

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def receive(request: Request, page: bool) -> jobs.Job:
        """The upload saved and checked, and its job queued; `jobs.UploadError` if not."""
        t0 = time.perf_counter()
        limit = settings.max_upload_bytes
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + FORM_OVERHEAD:
            raise jobs.UploadError(_too_large(int(length), settings), 413)
        try:
            form = await request.form(max_files=1, max_fields=16)
        except Exception as e:  # noqa: BLE001  # Starlette's parse errors have several types
            raise jobs.UploadError(f"not a multipart form with a 'video' file ({e})", 400) from None
        try:
            upload = form.get("video")
            if upload is None or isinstance(upload, str):
                raise jobs.UploadError("the form has no file in the field 'video'", 400)
            name = os.path.basename(upload.filename or "upload") or "upload"
            options = _options(form, page, len(clf.class_names))
            # No extension: FFmpeg then goes by the content alone (given ".txt" it
            # renders text as frames, its tty demuxer).
            path = os.path.join(worker.tmp_dir, uuid.uuid4().hex)
            size = await run_in_threadpool(_save, upload.file, path, limit)
        finally:
            await form.close()
        if size > limit:
            jobs._remove(path)
            raise jobs.UploadError(_too_large(size, settings), 413)
        t1 = time.perf_counter()
        try:
            duration = await run_in_threadpool(jobs.check_video, path, name)
        except BaseException:
            jobs._remove(path)
            raise
        window_s = options.pop("window_s")
        if page and window_s and duration is not None and duration <= window_s:
            window_s = None  # the page's timeline: only for videos longer than one window
        seconds = {"upload_s": t1 - t0, "check_s": time.perf_counter() - t1}
        job = jobs.Job(upload=jobs.Upload(path, name, size, duration, seconds),
                       window_s=window_s, **options)
        return worker.submit(job)

    async def accepted(request: Request, page: bool):
        try:
            return await receive(request, page), None
        except jobs.UploadError as e:
            return None, error(e.status, str(e))
        except jobs.QueueFull as e:
            return None, error(503, str(e), {"Retry-After": str(e.retry_after_s)})
        except MatEffNetError as e:
            return None, error(400, str(e))

    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(os.path.join(STATIC, "index.html"), media_type="text/html")

    @app.get("/healthz")
    async def healthz():
        return {"status": "ready", "queue": worker.status(), **(about or {})}

    @app.get("/v1/model")
    async def model():
        return {"class_names": list(clf.class_names), "streams": list(clf.streams),
                "preparation": clf.preparation, "identities": clf.identities,
                "num_segments": clf.num_segments, "fusion_weights": list(clf.fusion_weights),
                "limits": {"max_upload_mb": settings.max_upload_mb,
                           "max_queue": settings.max_queue, "window_s": settings.window_s}}

    @app.post("/v1/predict")
    async def predict(request: Request):
        job, refused = await accepted(request, page=False)
        if refused is not None:
            return refused
        await asyncio.wrap_future(job.future)
        if job.state == "failed":
            return error(job.status, job.error)
        return job.result

    @app.post("/v1/jobs", status_code=202)
    async def submit(request: Request):
        job, refused = await accepted(request, page=True)
        if refused is not None:
            return refused
        return JSONResponse(job.progress(worker.get(job.id)[1]), status_code=202)

    @app.get("/v1/jobs/{job_id}")
    async def progress(job_id: str):
        job, ahead = worker.get(job_id)
        if job is None:
            return error(404, f"no job {job_id} (finished jobs are kept for a while only)")
        return job.progress(ahead)

    @app.get("/v1/jobs/{job_id}/attention.png")
    async def attention(job_id: str):
        job, _ = worker.get(job_id)
        if job is None or job.attention_png is None:
            return error(404, f"no attention picture for job {job_id}")
        return Response(job.attention_png, media_type="image/png")

    return app


def _options(form, page: bool, num_classes: int) -> dict:
    """The form's optional fields, checked; `MatEffNetError` naming a bad one."""
    def number(name, kind, default=None):
        text = form.get(name)
        if text is None or (isinstance(text, str) and not text.strip()):
            return default
        try:
            return kind(text)
        except (TypeError, ValueError):
            raise bad_argument(name, text, f"expected a {kind.__name__}") from None

    window_s, stride_s = number("window_s", float), number("stride_s", float)
    top_k = number("top_k", int, 5)
    attention = str(form.get("attention", "1" if page else "0")).lower() in ("1", "true", "yes")
    if window_s is not None and window_s <= 0:
        if not page:  # the page sends 0 for "no timeline"
            _refuse("window_s", window_s, "must be > 0")
        window_s = None
    if stride_s is not None and (stride_s <= 0 or window_s is None):
        _refuse("stride_s", stride_s, "must be > 0, with a window_s")
    if not 1 <= top_k <= num_classes:
        _refuse("top_k", top_k, f"expected 1..{num_classes}")
    return {"window_s": window_s, "stride_s": stride_s, "top_k": top_k, "attention": attention}


def _refuse(name, value, why):
    raise bad_argument(name, value, why)


def _save(source, path: str, limit: int) -> int:
    """Copies the upload to ``path``, stopping one chunk past ``limit``; bytes read."""
    size = 0
    with open(path, "wb") as out:
        while True:
            chunk = source.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                break
            out.write(chunk)
    return size


def _too_large(size: int, settings: ServeSettings) -> str:
    return (f"the upload is too large ({size / 2 ** 20:.1f} MiB; the server takes up to "
            f"{settings.max_upload_mb:g} MiB, --max_upload_mb)")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to the address, not yet listening: a taken port fails now, and
    connections are refused (not left waiting) until the caller, ready, listens."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise MatEffNetError(f"cannot listen on {host}:{port} ({e.strerror})") from None
    return sock


def exit_on_signals() -> None:
    """Ctrl-C and SIGTERM end the process by `SystemExit`, so that ``finally`` blocks
    (the uploads folder's removal) run: during the warm-up, and after uvicorn's graceful
    shutdown, which raises the signal again with the handler it found."""
    def leave(signum, frame):
        raise SystemExit(0)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, leave)


def serve(app, sock: socket.socket) -> None:
    """Serves ``app`` on ``sock`` until interrupted (see `exit_on_signals`)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    uvicorn.Server(config).run(sockets=[sock])
