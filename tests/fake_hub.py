"""A loopback HTTP server that plays download.pytorch.org and the Hugging Face Hub for the tests.

    with FakeHub() as hub:
        hub.files["/models/tiny-1234abcd.pth"] = data          # torchvision: GET <base>/<file>
        hub.add_hf_repo("google/vit", "abc123...", {"config.json": b"{}"})  # HEAD/GET /<repo>/resolve/<rev>/<file>
        os.environ["CXR_TORCHVISION_BASE_URL"] = hub.url + "/models/"; os.environ["HF_ENDPOINT"] = hub.url

Nothing leaves 127.0.0.1. ``hub.drop`` holds paths whose body is cut off halfway (the connection
closes), ``hub.drop_once`` the same for the next request only; ``hub.etag_override`` lies about a
file's sha256; ``hub.requests`` logs (method, path).
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeHub:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.drop: set[str] = set()
        self.drop_once: set[str] = set()  # cut off the next GET of these paths only
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _serve(self, body: bool):
                path = self.path.split("?")[0]
                hub.requests.append((self.command, path))
                data = hub.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                m = re.match(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if m:
                    start = int(m.group(1))
                self.send_response(206 if start else 200)
                for k, v in hub.headers.get(path, {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return
                if path in hub.drop or path in hub.drop_once:  # half the body, then the connection goes away
                    hub.drop_once.discard(path)
                    self.wfile.write(data[start : start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

            def do_GET(self):
                self._serve(True)

            def do_HEAD(self):
                self._serve(False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add_hf_repo(self, repo_id: str, revision: str, files: dict[str, bytes], lfs=("model.safetensors",)):
        """Serve ``files`` as the Hub does: ETag = sha256 for LFS files (else a git-like sha1), X-Repo-Commit."""
        for name, data in files.items():
            path = f"/{repo_id}/resolve/{revision}/{name}"
            self.files[path] = data
            etag = hashlib.sha256(data).hexdigest() if name in lfs else hashlib.sha1(data).hexdigest()
            self.headers[path] = {"ETag": f'"{etag}"', "X-Repo-Commit": revision}

    def count(self, method: str = "GET", under: str = "/") -> int:
        """Requests of ``method`` for paths containing ``under`` (huggingface_hub also asks the
        endpoint for things that are not files, e.g. /api/agent-harnesses)."""
        return sum(1 for m, p in self.requests if m == method and under in p)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def closed_port_url() -> str:
    """A 127.0.0.1 URL nothing listens on: connection refused at once, like an offline machine."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"


class Blackhole:
    """A 127.0.0.1 port that accepts connections and never answers: a firewall that drops traffic."""

    def __enter__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        return self

    def __exit__(self, *exc):
        self.sock.close()
