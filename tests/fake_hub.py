"""A loopback stand-in for the Hugging Face hub's file downloads (``$HF_ENDPOINT/ORG/REPO/resolve/REV/FILE``),
so first-run downloads are tested without the network: Range requests, redirects to a "CDN", a
connection that drops half-way, HTTP errors. Also a tiny valid ``.safetensors`` writer."""

from __future__ import annotations

import json
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SD1_KEY = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
SDXL_KEY = "conditioner.embedders.1.model.ln_final.weight"
DEFAULT_PATH = "/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"


def safetensors_bytes(*keys: str, padding: int = 0) -> bytes:
    """A valid .safetensors file holding one float per key (``padding`` extra zero bytes in the header)."""
    header = {k: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, k in enumerate(keys)}
    raw = json.dumps(header).encode() + b" " * padding
    return struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * len(keys))


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class FakeHub:
    files: dict[str, bytes]  # URL path -> content
    cut_after: int | None = None  # send only this many bytes of a full response, then drop the connection
    status: int | None = None  # answer every request with this HTTP status instead
    redirect_to: str | None = None  # base URL ("CDN") that every file request is redirected to
    seen: list[Seen] = field(default_factory=list)

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                hub.seen.append(Seen(self.path, dict(self.headers)))
                if hub.status is not None:
                    self.send_error(hub.status)
                    return
                if hub.redirect_to is not None:
                    self.send_response(302)
                    self.send_header("Location", hub.redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = hub.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                ranged = self.headers.get("Range", "")
                if ranged.startswith("bytes="):
                    start = int(ranged[6:].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Length", str(len(rest)))
                self.end_headers()
                if hub.cut_after is not None:
                    self.wfile.write(rest[: hub.cut_after])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
