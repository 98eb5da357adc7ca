"""Object storage on 127.0.0.1 for the tests, each server in its own process: moto's S3 server (DALI's
reader holds the GIL while it waits for an answer, so a server thread in the test process would never
answer it), and a static file server over http that answers Range requests as web servers do.

    python tests/servers.py http DIR PORT [--no-range]   # files under DIR; paths containing 'denied' get 403
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, proc: subprocess.Popen, what: str, log) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within 60 s")


@contextlib.contextmanager
def serve(args: list[str], port: int, what: str):
    # its log goes to a file: a pipe nobody reads fills up after a few hundred requests and stops the server
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            _wait(port, proc, what, log)
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@contextlib.contextmanager
def s3_server(monkeypatch):
    """moto's S3 on 127.0.0.1, with the AWS environment every client (boto3, DALI's SDK, child processes)
    reads: its endpoint and dummy credentials."""
    port = free_port()
    args = ["-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with serve(args, port, "moto's S3 server") as url:
        environment = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        yield url


@contextlib.contextmanager
def http_server(directory: Path, range_requests: bool = True):
    port = free_port()
    args = [__file__, "http", str(directory), str(port)] + ([] if range_requests else ["--no-range"])
    with serve(args, port, "the http file server") as url:
        yield url


class RangeHandler(SimpleHTTPRequestHandler):
    ranges = True

    def log_message(self, *args):  # quiet
        pass

    def send_head(self):
        self.remaining = None
        if "denied" in self.path:
            self.send_error(HTTPStatus.FORBIDDEN)
            return None
        match = re.fullmatch(r"bytes=(\d+)-(\d+)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if not (self.ranges and match and path.is_file()):
            return super().send_head()
        start, end = int(match[1]), min(int(match[2]), path.stat().st_size - 1)
        f = open(path, "rb")  # noqa: SIM115 (copyfile reads it, then the handler closes it)
        f.seek(start)
        self.send_response(HTTPStatus.PARTIAL_CONTENT)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Content-Range", f"bytes {start}-{end}/{path.stat().st_size}")
        self.end_headers()
        self.remaining = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        if getattr(self, "remaining", None) is None:
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(self.remaining))


if __name__ == "__main__":
    _, kind, directory, port, *flags = sys.argv
    assert kind == "http"
    RangeHandler.ranges = "--no-range" not in flags
    os.chdir(directory)
    ThreadingHTTPServer(("127.0.0.1", int(port)), RangeHandler).serve_forever()
