"""A model on first run: the default checkpoint downloaded from a loopback stand-in for the hub
(``HF_ENDPOINT``), never the network; resumed after an interruption, deleted when corrupt, refused in
one line when downloads are off."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest

from core.config import EngineSettings
from core.engine import catalog
from core.engine.download import ensure_model
from core.engine.models import ModelError
from tests.fake_hub import DEFAULT_PATH, SD1_KEY, FakeHub, safetensors_bytes

# Big enough that a cut after 1000 bytes leaves most of it unsent.
MODEL = safetensors_bytes(SD1_KEY, padding=200_000)
SHA = hashlib.sha256(MODEL).hexdigest()


@pytest.fixture
def hub():
    server = FakeHub({DEFAULT_PATH: MODEL}).start()
    yield server
    server.close()


def settings(tmp_path: Path, **changes) -> EngineSettings:
    values = {"model_dirs": (str(tmp_path / "models" / "Stable-diffusion"),), "download_sha256": SHA}
    return EngineSettings(**{**values, **changes})


def env(hub: FakeHub, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, **extra}


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_no_model_downloads_the_default_into_the_model_folder(tmp_path: Path, hub: FakeHub) -> None:
    s = settings(tmp_path)
    path = ensure_model(s, env(hub), progress=False)
    assert path == tmp_path / "models" / "Stable-diffusion" / "v1-5-pruned-emaonly.safetensors"
    assert path.read_bytes() == MODEL
    assert files(path.parent) == ["v1-5-pruned-emaonly.safetensors"]  # no .part left
    assert [seen.path for seen in hub.seen] == [DEFAULT_PATH]  # A1111's file, from HF_ENDPOINT
    assert catalog.model_names(s) == ["v1-5-pruned-emaonly"]
    assert catalog.default_model_name(s) == "v1-5-pruned-emaonly"
    # Now there is a model: nothing more is downloaded.
    assert ensure_model(s, env(hub), progress=False) is None
    assert len(hub.seen) == 1


def test_a_model_already_there_means_no_download(tmp_path: Path, hub: FakeHub) -> None:
    folder = tmp_path / "models" / "Stable-diffusion" / "sub"
    folder.mkdir(parents=True)
    (folder / "mine.safetensors").write_bytes(MODEL)
    assert ensure_model(settings(tmp_path), env(hub), progress=False) is None
    assert hub.seen == []


def test_downloads_off_refuse_with_one_line_that_says_what_to_do(tmp_path: Path, hub: FakeHub) -> None:
    with pytest.raises(ModelError) as refused:
        ensure_model(settings(tmp_path, auto_download=False), env(hub), progress=False)
    text = str(refused.value)
    assert "\n" not in text
    assert str(tmp_path / "models" / "Stable-diffusion") in text
    assert "[engine.models.NAME]" in text and "engine.auto_download = true" in text
    with pytest.raises(ModelError, match="unset HF_HUB_OFFLINE"):
        ensure_model(settings(tmp_path), env(hub, HF_HUB_OFFLINE="1"), progress=False)
    assert hub.seen == []


def test_an_interrupted_download_leaves_no_model_and_resumes_next_time(tmp_path: Path, hub: FakeHub) -> None:
    s = settings(tmp_path)
    folder = tmp_path / "models" / "Stable-diffusion"
    hub.cut_after = 1000
    with pytest.raises(ModelError, match=r"stopped after .* start chant again to resume"):
        ensure_model(s, env(hub), progress=False)
    assert files(folder) == ["v1-5-pruned-emaonly.safetensors.part"]  # not a model name
    assert catalog.model_names(s) == []
    hub.cut_after = None
    path = ensure_model(s, env(hub), progress=False)
    assert path.read_bytes() == MODEL
    assert hub.seen[-1].headers.get("Range") == "bytes=1000-"  # resumed, not started over
    assert files(folder) == ["v1-5-pruned-emaonly.safetensors"]


def test_a_corrupt_download_is_deleted(tmp_path: Path, hub: FakeHub) -> None:
    hub.files[DEFAULT_PATH] = safetensors_bytes(SD1_KEY, padding=100)  # not the expected file
    folder = tmp_path / "models" / "Stable-diffusion"
    with pytest.raises(ModelError, match=r"is corrupt: its sha256 is .* it was deleted"):
        ensure_model(settings(tmp_path), env(hub), progress=False)
    assert files(folder) == []
    # Without a sha256 to compare, a file that is not a checkpoint is refused too.
    hub.files[DEFAULT_PATH] = b"<html>rate limited</html>" * 10
    with pytest.raises(ModelError, match=r"is corrupt: not a \.safetensors file"):
        ensure_model(settings(tmp_path, download_sha256=None), env(hub), progress=False)
    hub.files[DEFAULT_PATH] = safetensors_bytes("lora_unet_down.alpha")
    with pytest.raises(ModelError, match=r"not an SD 1.x, SD 2.x or SDXL checkpoint"):
        ensure_model(settings(tmp_path, download_sha256=None), env(hub), progress=False)
    assert files(folder) == []


@pytest.mark.parametrize(
    ("status", "message"),
    [(404, "has no file at .* check engine.download_model"), (401, "set HF_TOKEN"), (500, "HTTP 500")],
)
def test_hub_refusals_are_explained(tmp_path: Path, hub: FakeHub, status: int, message: str) -> None:
    hub.status = status
    with pytest.raises(ModelError, match=message):
        ensure_model(settings(tmp_path), env(hub), progress=False)
    assert files(tmp_path / "models" / "Stable-diffusion") == []


def test_an_unreachable_hub_is_named(tmp_path: Path, hub: FakeHub) -> None:
    url = hub.url
    hub.close()
    with pytest.raises(ModelError, match=rf"cannot reach {url[7:]} .* check the network \(or HF_ENDPOINT\)"):
        ensure_model(settings(tmp_path), {"HF_ENDPOINT": url}, progress=False)


def test_the_token_goes_to_the_hub_and_not_to_the_cdn_it_redirects_to(tmp_path: Path, hub: FakeHub) -> None:
    cdn = FakeHub({DEFAULT_PATH: MODEL}).start()
    try:
        hub.redirect_to = cdn.url
        path = ensure_model(settings(tmp_path), env(hub, HF_TOKEN="hf_secret"), progress=False)
        assert path.read_bytes() == MODEL
        assert hub.seen[0].headers.get("Authorization") == "Bearer hf_secret"
        assert "Authorization" not in cdn.seen[0].headers
    finally:
        cdn.close()


def test_two_processes_starting_at_once_download_once(tmp_path: Path, hub: FakeHub) -> None:
    s = settings(tmp_path)
    results: list[object] = []

    def start() -> None:
        try:
            results.append(ensure_model(s, env(hub), progress=False))
        except Exception as exc:  # pragma: no cover - reported by the assert below
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(r, Path) or r is None for r in results), results
    assert len(hub.seen) == 1
    assert (tmp_path / "models" / "Stable-diffusion" / "v1-5-pruned-emaonly.safetensors").read_bytes() == MODEL


def test_a_process_that_waited_on_a_corrupt_download_tries_again_cleanly(tmp_path: Path, hub: FakeHub) -> None:
    hub.files[DEFAULT_PATH] = safetensors_bytes(SD1_KEY, padding=150_000)  # not the expected file
    s = settings(tmp_path)
    errors: list[str] = []

    def start() -> None:
        try:
            ensure_model(s, env(hub), progress=False)
        except ModelError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # Each found the file corrupt (the second one on a fresh .part, not on the deleted one).
    assert len(errors) == 2 and all("is corrupt: its sha256 is" in e for e in errors), errors
    assert files(tmp_path / "models" / "Stable-diffusion") == []
