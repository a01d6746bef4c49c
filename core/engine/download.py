"""A model on first run, as A1111 does: with no model at all, download one into the model folder.

A1111 1.10 downloads SD 1.5's ``v1-5-pruned-emaonly.safetensors`` from ``$HF_ENDPOINT`` (default
https://huggingface.co) into ``models/Stable-diffusion`` when it finds no checkpoint, and checks its
sha256. chant does the same for ``chant run``, ``chant worker`` and ``chant generate``
(``engine.download_model``, ``engine.download_sha256``), or with ``engine.auto_download = false``
refuses to start with one line that says what to do. Torch-free: plain HTTP (``urllib``), a
progress bar on standard error.

The file is written as ``NAME.safetensors.part`` (never a model name: the folder scan and name
resolution only take ``.safetensors``) and renamed into place only once it is complete, its sha256
matches and its header is a Stable Diffusion checkpoint's. An interrupted download keeps its
``.part`` and the next start resumes it (HTTP Range); a corrupt one is deleted. A second chant process
starting at the same time waits for the first one's download (a lock on the ``.part`` file).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from core.config import DEFAULT_DOWNLOAD, EngineSettings
from core.engine import catalog
from core.engine.models import ModelError

log = logging.getLogger(__name__)

HUB = "https://huggingface.co"
CHUNK = 1 << 20
TIMEOUT_S = 30.0


def ensure_model(
    settings: EngineSettings, env: Mapping[str, str] | None = None, *, progress: bool = True
) -> Path | None:
    """Nothing when there is a model to run; else the default download's path, downloaded now.

    Raises :class:`ModelError` with one line an operator can act on: downloads are off
    (``engine.auto_download = false`` or ``HF_HUB_OFFLINE=1``), the hub cannot be reached, the
    download was interrupted or corrupt.
    """
    env = os.environ if env is None else env
    if not download_needed(settings, env):
        return None
    repo, file = split_hub_file(settings.download_model)
    endpoint = (env.get("HF_ENDPOINT") or HUB).rstrip("/")
    url = f"{endpoint}/{repo}/resolve/main/{urllib.parse.quote(file)}"
    dest = Path(settings.model_dirs[0]).expanduser() / Path(file).name
    log.info("no model found: downloading %s into %s (engine.auto_download)", url, dest.parent)
    return download(
        url, dest, sha256=settings.download_sha256, token=env.get("HF_TOKEN") or None, progress=progress
    )


def download_needed(settings: EngineSettings, env: Mapping[str, str] | None = None) -> bool:
    """Whether :func:`ensure_model` would download (there is no model at all); ModelError when there
    is none and downloads are off. Torch-free and quick: callers check this before loading torch."""
    env = os.environ if env is None else env
    if catalog.model_names(settings):
        return False
    hint = catalog.no_model_hint(settings)
    what = settings.download_model + (" (about 4 GB)" if settings.download_model == DEFAULT_DOWNLOAD else "")
    if not settings.auto_download:
        raise ModelError(f"no model: {hint}; or set engine.auto_download = true to download {what}")
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise ModelError(f"no model: {hint}; or unset HF_HUB_OFFLINE so chant can download {what}")
    if not settings.model_dirs:
        raise ModelError("no model, and engine.model_dirs is empty: name a folder to download the default model into")
    return True


def split_hub_file(spec: str) -> tuple[str, str]:
    """``org/repo/path/file.safetensors`` -> (``org/repo``, ``path/file.safetensors``)."""
    parts = spec.split("/")
    if len(parts) < 3 or not all(parts) or ".." in parts:
        raise ModelError(f"engine.download_model must be ORG/REPO/FILE.safetensors, not {spec!r}")
    return "/".join(parts[:2]), "/".join(parts[2:])


def download(
    url: str, dest: Path, *, sha256: str | None = None, token: str | None = None, progress: bool = True
) -> Path:
    """``url`` into ``dest`` through ``dest.part`` (resumed when one is there); see the module doc."""
    part = dest.with_name(dest.name + ".part")
    start = time.monotonic()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        while True:
            with open(part, "ab") as handle:
                _lock(handle)  # another chant process downloading the same file: wait for it
                if dest.exists():  # it finished while we waited
                    if part.exists() and part.stat().st_size == 0:
                        part.unlink()
                    return dest
                if not _still_named(handle, part):
                    continue  # the .part we waited on was deleted (corrupt) meanwhile: open the new one
                try:
                    _fetch(url, handle, token, progress, dest)
                except ModelError:
                    if handle.tell() == 0:  # nothing to resume: leave nothing behind
                        part.unlink(missing_ok=True)
                    raise
                _verify(part, sha256, url)  # still under the lock: nobody resumes a file being checked
                os.replace(part, dest)
                break
    except OSError as exc:
        raise ModelError(f"cannot write the model download into {dest.parent}: {exc.strerror or exc}") from None
    size = dest.stat().st_size
    log.info("downloaded %s (%.2f GB) in %.0f s", dest, size / 1e9, time.monotonic() - start)
    return dest


def _still_named(handle, part: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(handle.fileno()), part.stat())
    except FileNotFoundError:
        return False


def _lock(handle) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows): no lock, one process at a time is the operator's job
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


def _fetch(url: str, handle, token: str | None, progress: bool, dest: Path) -> None:
    """Append the rest of ``url`` to ``handle`` (from its current size), with a progress bar."""
    name = dest.name
    have = handle.seek(0, os.SEEK_END)
    request = urllib.request.Request(url, headers={"User-Agent": "chant"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if have:
        request.add_header("Range", f"bytes={have}-")
    host = urllib.parse.urlsplit(url).netloc
    try:
        response = _opener().open(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the .part already holds the whole file
            return
        raise ModelError(_http_refusal(exc.code, url, dest)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelError(
            f"cannot reach {host} to download the default model ({reason}); check the network (or "
            f"HF_ENDPOINT), or {_yourself(dest)}"
        ) from None
    with response:
        if have and response.status != 206:  # the server ignored the Range: start over
            handle.seek(0)
            handle.truncate()
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        received = have
        bar = _bar(total, have, name, progress)
        try:
            while chunk := response.read(CHUNK):
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            handle.flush()
            raise ModelError(_interrupted(name, received, total, exc)) from None
        finally:
            bar.close()
    handle.flush()
    if total is not None and received < total:
        raise ModelError(_interrupted(name, received, total, "the connection closed early"))


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_DropAuthorizationOnHostChange())


class _DropAuthorizationOnHostChange(urllib.request.HTTPRedirectHandler):
    """The hub redirects downloads to a CDN: the token goes to the hub only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _bar(total: int | None, have: int, name: str, progress: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"downloading {name}",
        file=sys.stderr,
        disable=not progress,
        mininterval=0.5,
        dynamic_ncols=True,
    )


def _yourself(dest: Path) -> str:
    return f"put a .safetensors checkpoint into {dest.parent} yourself"


def _http_refusal(code: int, url: str, dest: Path) -> str:
    if code in (401, 403):
        return (
            f"the hub refused the download of {url} (HTTP {code}); if the file needs an account, set "
            "HF_TOKEN, or set engine.download_model to a public file"
        )
    if code == 404:
        return f"the hub has no file at {url} (HTTP 404): check engine.download_model"
    return f"the download of {url} failed with HTTP {code}; start chant again later, or {_yourself(dest)}"


def _interrupted(name: str, received: int, total: int | None, reason) -> str:
    of = f" of {total / 1e6:.0f} MB" if total else ""
    return (
        f"the download of {name} stopped after {received / 1e6:.0f} MB{of} ({reason}); start chant again "
        "to resume it"
    )


def _verify(part: Path, sha256: str | None, url: str) -> None:
    """A complete download is the expected file and a Stable Diffusion checkpoint, or it is deleted."""
    problem = None
    if sha256:
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            problem = f"its sha256 is {digest.hexdigest()}, not {sha256} (engine.download_sha256)"
    if problem is None:
        try:
            kind = catalog.kind_of_keys(catalog.safetensors_keys(part))
        except ValueError as exc:
            kind, problem = None, str(exc).split(": ", 1)[-1]
        if problem is None and kind is None:
            problem = "it is not an SD 1.x, SD 2.x or SDXL checkpoint"
    if problem is not None:
        with contextlib.suppress(OSError):
            part.unlink()
        raise ModelError(f"the download from {url} is corrupt: {problem}; it was deleted, start chant again")
