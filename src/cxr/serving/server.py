"""``cxr serve``: MLflow's scoring server for a logged or registered model, behind a guard.

``mlflow models serve`` reads any body whole (a 50 MB request is parsed, then echoed back inside its 400)
and grows with each malformed request. ``cxr serve`` builds the same app (``/invocations``, ``/ping``,
``/health``, ``/version``: :func:`mlflow.pyfunc.scoring_server.init`) and puts :class:`Guard` in front
of it: a body over ``--max-body-mb`` is refused with 413 before it is read (by its Content-Length, or as
soon as a chunked body passes the limit), a JSON body that does not parse (or nests deeper than Python's
parser goes) is a 400 naming where, and an error answer from MLflow is cut to a few KB, its stack trace
dropped. Answers to well-formed requests are MLflow's, byte for byte.
"""

from __future__ import annotations

import json
import sys

DEFAULT_MAX_BODY_MB = 32.0  # a 3000 x 3000 16-bit DICOM is 18 MB, 24 MB in base64
MAX_ERROR_CHARS = 1000  # an error message longer than this is cut (a body echoed back, a long traceback)


class _TooLarge(Exception):
    pass


def _shorten(body: bytes) -> bytes:
    """An error answer cut to MAX_ERROR_CHARS: MLflow's JSON ``message`` shortened, its ``stack_trace``
    dropped; any other body cut as text."""
    try:
        err = json.loads(body)
    except ValueError:
        err = None
    if not isinstance(err, dict):
        text = body.decode("utf-8", "replace")
        return _cut(text).encode() if len(text) > MAX_ERROR_CHARS else body
    err.pop("stack_trace", None)
    if isinstance(err.get("message"), str):
        err["message"] = _cut(err["message"])
    return json.dumps(err).encode()


def _cut(text: str) -> str:
    if len(text) <= MAX_ERROR_CHARS:
        return text
    return f"{text[:MAX_ERROR_CHARS]} ... ({len(text) - MAX_ERROR_CHARS:,} more characters not shown)"


class Guard:
    """ASGI middleware: a bounded request body, well-formed JSON, short error answers (module docstring)."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.max_body = int(max_body_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.max_body:
            return await self._refuse(send, 413, self._too_large(f"its Content-Length is {int(declared):,} bytes"))
        try:
            body = await self._read(receive)
        except _TooLarge:
            return await self._refuse(send, 413, self._too_large("its body passed that size"))
        if b"json" in headers.get(b"content-type", b"").lower():
            problem = _json_problem(body)
            if problem:
                return await self._refuse(send, 400, problem)
        return await self.app(scope, _replay(body, receive), _short_errors(send))

    def _too_large(self, why: str) -> str:
        return (
            f"request refused: {why}, over this server's limit of {self.max_body:,} bytes; send fewer images "
            f"per request, or start the server with a larger --max-body-mb"
        )

    async def _read(self, receive) -> bytes:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    async def _refuse(send, status: int, message: str) -> None:
        code = "RESOURCE_EXHAUSTED" if status == 413 else "BAD_REQUEST"
        body = json.dumps({"error_code": code, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        # Connection: close, so a client still sending the refused body is not read any further.
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _json_problem(body: bytes) -> str | None:
    """Why ``body`` is not JSON MLflow can parse, in one line; None when it is."""
    try:
        json.loads(body)
    except RecursionError:
        return "request refused: the JSON is nested deeper than the server parses; send a dataframe_split table"
    except UnicodeDecodeError as exc:
        return f"request refused: the body is not UTF-8 (byte {exc.start}); send JSON encoded as UTF-8"
    except ValueError as exc:
        return f"request refused: the body is not JSON ({_cut(str(exc))}); send a dataframe_split table"
    return None


def _replay(body: bytes, receive):
    """The body already read, handed to the app as one message; later receives wait for a disconnect."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _short_errors(send):
    """``send`` that passes success answers through and cuts an error answer's body (:func:`_shorten`)."""
    state: dict = {"start": None, "body": []}

    async def guarded(message):
        if message["type"] == "http.response.start" and message["status"] >= 400:
            state["start"] = message
            return
        if state["start"] is None:
            return await send(message)
        if message["type"] == "http.response.body":
            state["body"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = _shorten(b"".join(state["body"]))
            start = state["start"]
            headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            await send({**start, "headers": headers})
            return await send({"type": "http.response.body", "body": body})
        return await send(message)

    return guarded


def build_app(model_uri: str, max_body_bytes: int):
    """MLflow's scoring app for ``model_uri`` behind :class:`Guard`."""
    from cxr.serving.pyfunc import scoring_app

    return Guard(scoring_app(model_uri), max_body_bytes)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model over HTTP (MLflow's scoring protocol, with a bounded request size)",
        description="MLflow's scoring server (POST /invocations, GET /ping) for a registered or logged model, "
        "behind a guard: bodies over --max-body-mb are refused with 413 before they are read, malformed "
        "JSON gets a one-line 400, error answers are never longer than a few KB.",
    )
    p.add_argument("--model", "-m", required=True, help="models:/cxr-pneumonia@champion, runs:/..., or a path")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", "-p", type=int, default=5001, help="port (default 5001)")
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=DEFAULT_MAX_BODY_MB,
        help=f"largest request body accepted, in MB (default {DEFAULT_MAX_BODY_MB:g})",
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import os

    import uvicorn

    from cxr.run_context import tracking_uri

    if args.max_body_mb <= 0:
        print(f"cxr serve: error: --max-body-mb must be > 0 (got {args.max_body_mb:g})", file=sys.stderr)
        return 2
    # models:/ resolves against the project's store (sqlite:///mlflow.db), as `cxr predict` does
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri())
    try:
        app = build_app(args.model, int(args.max_body_mb * 2**20))
    except Exception as exc:  # MLflow's own message says what was not found
        print(f"cxr serve: error: cannot load {args.model}: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
