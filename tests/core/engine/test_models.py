"""Model resolution, safe loading, single-file <-> folder equivalence, hashing and the LRU."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.config import EngineSettings, ModelSettings
from core.engine import models, uses_hub
from core.engine.skeleton import skeleton_dir

ROOT = Path(__file__).resolve().parents[3]


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items()}


@pytest.mark.parametrize("fixture", ["tiny_sd15", "tiny_sd2", "tiny_sdxl"])
def test_single_file_loads_the_same_weights_as_the_folder(fixture, request) -> None:
    tiny = request.getfixturevalue(fixture)
    cpu, fp32 = torch.device("cpu"), torch.float32
    single = models.load_model(
        models.ModelSource(name="s", location=str(tiny.single_file), config=str(tiny.config)), cpu, fp32
    )
    folder = models.load_model(models.ModelSource(name="f", location=str(tiny.folder)), cpu, fp32)
    assert single.kind == folder.kind == tiny.arch
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if tiny.arch == "sdxl" else [])
    for name in names:
        a, b = _state(getattr(single.pipe, name)), _state(getattr(folder.pipe, name))
        assert a.keys() == b.keys(), name
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {different[:5]}"
    assert single.hash == hashlib.sha256(tiny.single_file.read_bytes()).hexdigest()[:10]


def test_kind_is_detected_from_tensor_names(tiny_sd15, tiny_sd2, tiny_sdxl, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    assert models.detect_kind(tiny_sd15.single_file) == "sd1"
    assert models.detect_kind(tiny_sd2.single_file) == "sd2"
    assert models.detect_kind(tiny_sdxl.single_file) == "sdxl"
    sd2 = tmp_path / "sd2.safetensors"
    save_file({"cond_stage_model.model.ln_final.weight": torch.zeros(2)}, str(sd2))
    assert models.detect_kind(sd2) == "sd2"
    other = tmp_path / "other.safetensors"
    save_file({"something.else": torch.zeros(2)}, str(other))
    with pytest.raises(models.ModelError, match=r"not an SD 1\.x, SD 2\.x or SDXL checkpoint"):
        models.detect_kind(other)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(models.ModelError, match="not a readable"):
        models.detect_kind(broken)


def test_shipped_skeletons_load_offline_with_generated_tokenizers() -> None:
    from transformers import CLIPTokenizer

    for kind in ("sd1", "sd2", "sdxl"):
        folder = skeleton_dir(kind)
        assert (folder / "unet" / "config.json").exists()
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        ids = tokenizer("a photo of a cat, masterpiece").input_ids
        assert ids[0] == 49406 and ids[-1] == 49407
        assert tokenizer.convert_ids_to_tokens(ids[1:3]) == ["a</w>", "photo</w>"]
    pad_2 = CLIPTokenizer.from_pretrained(skeleton_dir("sdxl") / "tokenizer_2", local_files_only=True)
    assert pad_2.pad_token_id == 0  # SDXL's OpenCLIP-G tokenizer pads with "!"
    sd2 = CLIPTokenizer.from_pretrained(skeleton_dir("sd2") / "tokenizer", local_files_only=True)
    assert sd2.pad_token_id == 0  # so does SD 2.x's OpenCLIP-H


def test_sd2_prediction_type_uses_a1111s_probe() -> None:
    from types import SimpleNamespace

    class Probe(torch.nn.Module):
        def __init__(self, shift: float) -> None:
            super().__init__()
            self.shift = torch.nn.Parameter(torch.tensor(shift))
            self.config = SimpleNamespace(cross_attention_dim=8, in_channels=4)

        def forward(self, x, t, encoder_hidden_states):
            assert t.tolist() == [999] and encoder_hidden_states.shape == (1, 2, 8)
            return SimpleNamespace(sample=x + self.shift)

    assert models.uses_v_prediction(Probe(-1.5))
    assert not models.uses_v_prediction(Probe(-0.5))


def _settings(folder: Path, **changes) -> EngineSettings:
    return EngineSettings(model_dirs=(str(folder),), **changes)


def test_pickle_checkpoints_are_refused_with_a_conversion_hint(tmp_path: Path) -> None:
    (tmp_path / "old.ckpt").write_bytes(b"pickle")
    with pytest.raises(models.ModelError, match=r"pickle checkpoints.*Convert it once to \.safetensors"):
        models.resolve_model(_settings(tmp_path), "old")
    with pytest.raises(models.ModelError, match="pickle"):
        models.resolve_model(_settings(tmp_path), str(tmp_path / "old.ckpt"), allow_paths=True)
    allowed = models.resolve_model(_settings(tmp_path, allow_pickle=True), "old")
    assert allowed.location == str((tmp_path / "old.ckpt").resolve())


def test_names_never_leave_the_model_folders(tmp_path: Path) -> None:
    inside = tmp_path / "models"
    inside.mkdir()
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(b"x")
    (inside / "good.safetensors").write_bytes(b"x")
    (inside / "link.safetensors").symlink_to(outside)
    settings = _settings(inside)
    assert models.resolve_model(settings, "good").location == str((inside / "good.safetensors").resolve())
    for name in ("../secret", "../secret.safetensors", str(outside), "~/x", "link"):
        with pytest.raises(models.ModelError):
            models.resolve_model(settings, name)
    # A path is only a path for the operator's CLI.
    with pytest.raises(models.ModelError, match="not a plain name"):
        models.resolve_model(_settings(tmp_path / "nowhere"), str(inside / "good.safetensors"))
    with pytest.raises(models.ModelError, match="unknown model"):
        models.resolve_model(_settings(inside), "models/good")
    assert models.resolve_model(settings, str(outside), allow_paths=True).location == str(outside.resolve())


def test_configured_names_and_clear_errors(tmp_path: Path) -> None:
    file = tmp_path / "m.safetensors"
    file.write_bytes(b"x")
    settings = EngineSettings(models={"mine": ModelSettings(source=str(file))}, model_dirs=())
    assert models.resolve_model(settings, None).name == "mine"  # the first configured is the default
    assert models.resolve_model(settings, "mine").location == str(file.resolve())
    with pytest.raises(models.ModelError, match=r"unknown model 'other' \(known: mine\)"):
        models.resolve_model(settings, "other")
    with pytest.raises(models.ModelError, match=r"no model: put a Stable Diffusion \.safetensors checkpoint in"):
        models.resolve_model(EngineSettings(model_dirs=(str(tmp_path / "empty"),)), None)
    hub = EngineSettings(models={"h": ModelSettings(source="org/some-model")})
    assert models.resolve_model(hub, "h").is_hub
    missing = EngineSettings(models={"x": ModelSettings(source="/no/such/file.safetensors")})
    with pytest.raises(models.ModelError, match="does not exist"):
        models.resolve_model(missing, "x")


def test_short_hash_is_computed_once_and_follows_changes(tmp_path: Path, monkeypatch) -> None:
    file = tmp_path / "m.safetensors"
    file.write_bytes(b"first")
    cache = tmp_path / "hashes.json"
    assert models.short_hash(file, cache) == hashlib.sha256(b"first").hexdigest()[:10]

    def boom(path):
        raise AssertionError("hashed twice")

    monkeypatch.setattr(models, "sha256_file", boom)
    assert models.short_hash(file, cache) == hashlib.sha256(b"first").hexdigest()[:10]
    monkeypatch.undo()
    file.write_bytes(b"second, longer")
    os.utime(file, ns=(1, 1))
    assert models.short_hash(file, cache) == hashlib.sha256(b"second, longer").hexdigest()[:10]


def test_lru_keeps_at_most_max_loaded_models(tiny_sd15) -> None:
    cache = models.ModelCache(max_loaded=1)
    cpu, fp32 = torch.device("cpu"), torch.float32
    a = models.ModelSource(name="a", location=str(tiny_sd15.folder))
    b = models.ModelSource(name="b", location=str(tiny_sd15.single_file), config=str(tiny_sd15.config))
    first = cache.get(a, cpu, fp32)
    assert cache.get(a, cpu, fp32) is first
    cache.get(b, cpu, fp32)
    assert cache.loaded_names() == ["b"]
    assert first.load_seconds > 0


def test_hub_offline_unless_a_hub_id_is_configured(tmp_path: Path) -> None:
    assert not uses_hub(EngineSettings(models={"a": ModelSettings(source=str(tmp_path))}))
    assert uses_hub(EngineSettings(models={"a": ModelSettings(source="stabilityai/sdxl-turbo")}))


def test_importing_the_engine_package_loads_no_torch() -> None:
    code = "import sys, core.engine, core.engine.api; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_a_single_file_generates_with_the_network_cut_and_no_offline_variables(tiny_sd15) -> None:
    code = f"""
import os, socket
def refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")
socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
from core.config import EngineSettings, ModelSettings
from core.engine import create_engine
from core.types import GenerationRequest
model = ModelSettings(source={str(tiny_sd15.single_file)!r}, config={str(tiny_sd15.config)!r})
engine = create_engine(EngineSettings(device="cpu", threads=1, embedding_dirs=(), models={{"tiny": model}}))
result = engine.generate(GenerationRequest(prompt="a cat", seed=1, width=64, height=64, steps=2))
print("ok", len(result.images[0].png) > 0, os.environ.get("HF_HUB_OFFLINE"))
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "ok True 1"  # create_engine set HF_HUB_OFFLINE


def test_a_diffusers_folder_with_pickle_weights_is_refused_before_reading(
    tiny_sd15, tmp_path, monkeypatch
) -> None:
    import shutil

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_sd15.folder, folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))  # the name is what counts: nothing may read it

    def no_reading(*args, **kwargs):
        raise AssertionError("a pickle was read")

    monkeypatch.setattr(torch, "load", no_reading)
    source = models.ModelSource(name="pickled", location=str(folder))
    with pytest.raises(
        models.ModelError, match=r"unet/diffusion_pytorch_model\.bin is a pickle weights file"
    ) as err:
        models.load_model(source, torch.device("cpu"), torch.float32)
    assert "\n" not in str(err.value) and "engine.allow_pickle" in str(err.value)


def test_a_pickle_that_needs_code_to_load_is_one_clear_line(tmp_path) -> None:
    import argparse

    path = tmp_path / "trap.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(x=1)}, str(path))
    source = models.ModelSource(name="trap", location=str(path), kind="sd1")
    with pytest.raises(
        models.ModelError, match=r"trap\.ckpt: refused: this pickle file holds Python objects"
    ) as err:
        models.load_model(source, torch.device("cpu"), torch.float32, allow_pickle=True)
    assert "\n" not in str(err.value)
    with pytest.raises(
        models.ModelError, match="refused: this pickle file"
    ):  # the kind detection reads it too
        models.detect_kind(path)


def test_v_prediction_and_ztsnr_come_from_the_checkpoint_keys_or_the_settings(tiny_sdxl, tmp_path) -> None:
    """NoobAI/Illustrious v-pred files carry empty ``v_pred`` / ``ztsnr`` tensors (A1111 1.10, Forge and
    ComfyUI read them); a model's settings override what the file says."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(tiny_sdxl.single_file))
    save_file(
        {**state, "v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}, str(tmp_path / "vpred.safetensors")
    )
    cpu, fp32 = torch.device("cpu"), torch.float32

    def load(name, **settings):
        source = models.ModelSource(
            name=name, location=str(tmp_path / "vpred.safetensors"), config=str(tiny_sdxl.config), **settings
        )
        return models.load_model(source, cpu, fp32).noise

    found = load("v")
    assert found.prediction == "v" and found.zero_terminal_snr
    assert found.alphas_cumprod[-1].item() == pytest.approx(4.8973451890853435e-08)
    overridden = load("eps", prediction="eps", zero_terminal_snr=False)
    assert overridden.prediction == "eps" and not overridden.zero_terminal_snr
    plain = models.load_model(
        models.ModelSource(name="p", location=str(tiny_sdxl.single_file), config=str(tiny_sdxl.config)),
        cpu,
        fp32,
    ).noise
    assert plain.prediction == "eps" and not plain.zero_terminal_snr
    with pytest.raises(models.ModelError, match="prediction must be one of auto, eps, v"):
        models.resolve_model(
            EngineSettings(
                models={"m": ModelSettings(source=str(tmp_path / "vpred.safetensors"), prediction="x")}
            ),
            "m",
        )
