"""Start `hx-infer serve` on a free loopback port and talk to it (tests/hx_infer/serve/test_serve.py).

Everything here targets 127.0.0.1 only.
"""
from __future__ import annotations

import http.client
import json
import os
import queue
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
_LISTENING = re.compile(r"on http://127\.0\.0\.1:(\d+)$")


class Connection(http.client.HTTPConnection):
    """http.client with TCP_NODELAY, as curl and urllib3 set it: without it the last segment of a
    body waits for the server's delayed ACK (~40 ms) on every request."""

    def connect(self) -> None:
        super().connect()
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Served:
    """A `hx-infer serve` subprocess; stderr is read on a thread (kept in .log) so it never blocks."""

    def __init__(self, model_dir: Path, *args: str, timeout_s: float = 120, stdout=subprocess.DEVNULL):
        """stdout: where the server's stdout goes (a file to read its --access-log)."""
        command = [sys.executable, "-m", "hx_infer.cli", "serve", "--model", str(model_dir), "--host", HOST,
                   "--port", "0", "--backend", "ort", "--device", "cpu", *args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=stdout,
                                     stderr=subprocess.PIPE, text=True)
        self.log: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        self.port: int | None = None
        while self.port is None:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError("hx-infer serve did not start:\n" + "".join(self.log))
            match = _LISTENING.search(line.strip())
            if match:
                self.port = int(match.group(1))

    def _read(self, lines: queue.Queue) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            lines.put(line)
        lines.put(None)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = Connection(HOST, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None):
        return self.request("POST", path, body, headers)

    def health(self) -> dict:
        status, _, body = self.request("GET", "/healthz")
        assert status == 200
        return json.loads(body)

    def wait_health(self, key: str, value: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while self.health()[key] != value:
            if time.monotonic() > deadline:
                raise AssertionError(f"/healthz {key} never became {value}: {self.health()}")
            time.sleep(0.02)

    def raw(self) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def multipart(fields: dict[str, str], file: bytes | None, name: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body as rembg's clients send it -> (body, Content-Type)."""
    boundary = "hx-test-boundary-7d1f"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="photo.jpg"\r\n'
                     f'Content-Type: image/jpeg\r\n\r\n'.encode() + file + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP response from a raw socket (the server closes or says Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body
