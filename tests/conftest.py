"""Shared test fixtures: the committed real records, a PhysioNet-layout mirror on 127.0.0.1."""

from __future__ import annotations

import http.server
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@dataclass
class Mirror:
    """A PhysioNet-layout server: ``<url>/<db>/<version>/<file>``, with faults on request."""

    root: Path
    url: str
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    """(path, Range header) of every GET."""
    drop_once: set[str] = field(default_factory=set)
    """Paths whose first response stops three quarters through the body."""
    ranges: bool = True
    """Whether the server honours Range requests (Python's own http.server does not)."""
    delay_s: float = 0.0
    """Seconds to wait before answering each request: a slow server."""

    def folder(self, database: str, version: str) -> Path:
        return self.root / database / version

    def publish(self, source: Path, database: str, version: str) -> Path:
        target = self.folder(database, version)
        shutil.copytree(source, target)
        return target

    def fetched(self, suffix: str) -> list[str]:
        return [path for path, _ in self.requests if path.endswith(suffix)]


def _handler(mirror: Mirror):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(mirror.root), **kwargs)

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            range_header = self.headers.get("Range")
            mirror.requests.append((path, range_header))
            if mirror.delay_s:
                time.sleep(mirror.delay_s)
            file = mirror.root / path.lstrip("/")
            if not file.is_file():
                self.send_error(404)
                return
            data = file.read_bytes()
            start = 0
            if range_header and mirror.ranges:
                start = int(range_header.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if path in mirror.drop_once:
                mirror.drop_once.discard(path)
                self.wfile.write(body[: len(body) * 3 // 4])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "mirror"
    root.mkdir()
    m = Mirror(root=root, url="")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(m))
    m.url = f"http://127.0.0.1:{server.server_address[1]}/"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield m
    server.shutdown()
    server.server_close()


@pytest.fixture
def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: what an unreachable PhysioNet looks like."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def write_pipeline(root: Path, name: str, text: str) -> Path:
    """A pipeline YAML in a throwaway project, so tests never write into the repository's data/."""
    path = root / "pipelines" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
