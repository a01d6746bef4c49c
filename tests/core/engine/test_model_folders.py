"""Model discovery as A1111 does it: the model folders scanned (subfolders too), every checkpoint usable
by its path-name, configured models first, the default chosen in a fixed order, per-model defaults.
Torch-free (core.engine.catalog reads safetensors headers itself)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from core.config import EngineSettings, ModelSettings
from core.engine import catalog, models
from core.engine.cli import _model_defaults

SD1_KEY = "cond_stage_model.transformer.text_model.final_layer_norm.weight"
SDXL_KEY = "conditioner.embedders.1.model.ln_final.weight"


def checkpoint(path: Path, *keys: str) -> Path:
    """A minimal valid .safetensors file holding one 1-float tensor per key."""
    header = {k: {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i, k in enumerate(keys)}
    raw = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (4 * len(keys)))
    return path


def a1111_folder(root: Path) -> Path:
    folder = root / "models" / "Stable-diffusion"
    checkpoint(folder / "v1-5-pruned-emaonly.safetensors", SD1_KEY)
    checkpoint(folder / "model10.safetensors", SD1_KEY)
    checkpoint(folder / "Model2.safetensors", SD1_KEY)
    checkpoint(folder / "sdxl" / "ponyDiffusionV6XL.safetensors", SDXL_KEY)
    checkpoint(folder / "sdxl" / "deep" / "juggernaut.safetensors", SDXL_KEY)
    checkpoint(folder / ".cache" / "huggingface" / "hidden.safetensors", SD1_KEY)  # hidden folder
    checkpoint(folder / "v1-5-pruned-emaonly.vae.safetensors", SD1_KEY)  # A1111 leaves VAEs out
    (folder / "half.safetensors.part").write_bytes(b"partial")  # an unfinished download
    (folder / "old.ckpt").write_bytes(b"pickle")
    (folder / "notes.txt").write_text("not a model")
    return folder


def test_checkpoints_are_found_in_subfolders_in_a1111_order(tmp_path: Path) -> None:
    folder = a1111_folder(tmp_path)
    found = catalog.scan_checkpoints((str(folder),))
    # Folders in natural order (the top folder first), files in natural order (2 before 10, any case).
    assert [f.name for f in found] == [
        "Model2",
        "model10",
        "v1-5-pruned-emaonly",
        "sdxl/ponyDiffusionV6XL",
        "sdxl/deep/juggernaut",
    ]
    assert found[3].path == folder / "sdxl" / "ponyDiffusionV6XL.safetensors"
    with_pickles = catalog.scan_checkpoints((str(folder),), allow_pickle=True)
    assert "old" in [f.name for f in with_pickles]


def test_a_diffusers_folder_is_one_model_and_its_parts_are_not(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    pipeline = folder / "b-turbo"
    (pipeline / "unet").mkdir(parents=True)
    (pipeline / "model_index.json").write_text("{}")
    checkpoint(pipeline / "unet" / "diffusion_pytorch_model.safetensors", "conv_in.weight")
    checkpoint(pipeline / "text_encoder" / "model.safetensors", "text_model.final_layer_norm.weight")
    skeleton = folder / "configs" / "sd15"  # a weight-free config skeleton: not a model
    (skeleton / "unet").mkdir(parents=True)
    (skeleton / "model_index.json").write_text("{}")
    checkpoint(folder / "a.safetensors", SD1_KEY)
    checkpoint(folder / "c.safetensors", SD1_KEY)
    settings = EngineSettings(model_dirs=(str(folder),))
    assert catalog.model_names(settings) == ["a", "b-turbo", "c"]
    assert models.resolve_model(settings, "b-turbo").location == str(pipeline.resolve())


def test_a_checkpoint_linked_from_outside_the_folder_is_not_listed(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    outside = checkpoint(tmp_path / "elsewhere" / "secret.safetensors", SD1_KEY)
    checkpoint(folder / "mine.safetensors", SD1_KEY)
    (folder / "link.safetensors").symlink_to(outside)
    assert [f.name for f in catalog.scan_checkpoints((str(folder),))] == ["mine"]
    with pytest.raises(models.ModelError):  # and resolving it by name is refused as before
        models.resolve_model(EngineSettings(model_dirs=(str(folder),)), "link")


def test_the_first_folder_wins_a_name_found_twice_and_missing_folders_are_skipped(tmp_path: Path) -> None:
    first = checkpoint(tmp_path / "a" / "same.safetensors", SD1_KEY)
    checkpoint(tmp_path / "b" / "same.safetensors", SD1_KEY)
    checkpoint(tmp_path / "b" / "other.safetensors", SD1_KEY)
    found = catalog.scan_checkpoints((str(tmp_path / "nope"), str(tmp_path / "a"), str(tmp_path / "b")))
    assert [(f.name, f.path) for f in found] == [("same", first), ("other", tmp_path / "b" / "other.safetensors")]


def test_every_found_checkpoint_resolves_by_its_name(tmp_path: Path) -> None:
    folder = a1111_folder(tmp_path)
    settings = EngineSettings(model_dirs=(str(folder),))
    for name in catalog.model_names(settings):
        source = models.resolve_model(settings, name)
        assert source.name == name and Path(source.location).is_file()
    pony = models.resolve_model(settings, "sdxl/ponyDiffusionV6XL")
    assert pony.location == str((folder / "sdxl" / "ponyDiffusionV6XL.safetensors").resolve())


def test_configured_models_come_first_then_found_ones_each_once(tmp_path: Path) -> None:
    folder = a1111_folder(tmp_path)
    outside = checkpoint(tmp_path / "elsewhere" / "custom.safetensors", SD1_KEY)
    settings = EngineSettings(
        model_dirs=(str(folder),),
        models={
            "zeta": ModelSettings(source=str(outside)),
            "sd15": ModelSettings(source=str(folder / "v1-5-pruned-emaonly.safetensors")),  # found too
            "gone": ModelSettings(source=str(tmp_path / "deleted.safetensors")),  # not usable
            "hub": ModelSettings(source="org/some-model"),
        },
    )
    assert catalog.model_names(settings) == [
        "zeta", "sd15", "hub", "Model2", "model10", "sdxl/ponyDiffusionV6XL", "sdxl/deep/juggernaut",
    ]


def test_the_default_is_the_setting_then_the_first_configured_then_the_first_found(tmp_path: Path) -> None:
    folder = a1111_folder(tmp_path)
    custom = checkpoint(tmp_path / "custom.safetensors", SD1_KEY)
    found_only = EngineSettings(model_dirs=(str(folder),))
    assert catalog.default_model_name(found_only) == "Model2"
    assert models.resolve_model(found_only, None).name == "Model2"
    configured = EngineSettings(model_dirs=(str(folder),), models={"mine": ModelSettings(source=str(custom))})
    assert catalog.default_model_name(configured) == "mine"
    chosen = EngineSettings(model_dirs=(str(folder),), default_model="sdxl/ponyDiffusionV6XL")
    assert models.resolve_model(chosen, None).location.endswith("ponyDiffusionV6XL.safetensors")
    empty = EngineSettings(model_dirs=(str(tmp_path / "empty"),))
    assert catalog.model_names(empty) == [] and catalog.default_model_name(empty) is None


def test_a_new_checkpoint_is_offered_without_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    settings = EngineSettings(model_dirs=(str(folder),))
    assert catalog.model_names(settings) == []
    checkpoint(folder / "dropped-in.safetensors", SD1_KEY)
    assert catalog.model_names(settings) == ["dropped-in"]


# --- per-model defaults -----------------------------------------------------------------------------


def test_an_sdxl_checkpoint_defaults_to_1024_square_and_an_sd1_one_sets_nothing(tmp_path: Path) -> None:
    folder = a1111_folder(tmp_path)
    settings = EngineSettings(model_dirs=(str(folder),))
    assert catalog.model_defaults(settings, "sdxl/ponyDiffusionV6XL").fields() == {"width": 1024, "height": 1024}
    assert catalog.model_defaults(settings, "model10").fields() == {}
    assert catalog.model_defaults(settings, "unknown").fields() == {}
    assert catalog.model_defaults(settings, None).fields() == {}


def test_a_model_table_sets_every_default_and_its_size_wins_over_the_sdxl_rule(tmp_path: Path) -> None:
    xl = checkpoint(tmp_path / "xl.safetensors", SDXL_KEY)
    settings = EngineSettings(
        model_dirs=(),
        models={
            "pony": ModelSettings(
                source=str(xl),
                size="832x1216",
                steps=25,
                cfg=6.5,
                sampler="DPM++ 2M",
                schedule="Karras",
                clip_skip=2,
                negative="lowres",
                prompt_prefix="score_9, score_8_up",
                prompt_suffix="detailed",
            ),
            "plain-xl": ModelSettings(source=str(xl)),
            "hub-xl": ModelSettings(source="org/xl-model", kind="sdxl"),
            "hub": ModelSettings(source="org/model"),
        },
    )
    pony = catalog.model_defaults(settings, "pony")
    assert pony.fields() == {
        "width": 832, "height": 1216, "steps": 25, "cfg_scale": 6.5, "sampler": "DPM++ 2M",
        "schedule_type": "Karras", "clip_skip": 2, "negative_prompt": "lowres",
    }
    assert pony.wrap("a cat") == "score_9, score_8_up, a cat, detailed"
    assert catalog.model_defaults(settings, "plain-xl").fields() == {"width": 1024, "height": 1024}
    assert catalog.model_defaults(settings, "plain-xl").wrap("a cat") == "a cat"
    assert catalog.model_defaults(settings, "hub-xl").fields() == {"width": 1024, "height": 1024}
    assert catalog.model_defaults(settings, "hub").fields() == {}  # kind "auto" on the hub: not known offline


def test_a_configured_models_file_picked_by_its_found_name_or_path_is_that_model(tmp_path: Path) -> None:
    """A v-prediction checkpoint in the model folder, configured with ``prediction``/``zero_terminal_snr``
    (exact's keys) and defaults: whichever way it is named, it is the configured model, with its table."""
    folder = tmp_path / "models"
    file = checkpoint(folder / "xl" / "noobai-vpred.safetensors", SDXL_KEY)
    checkpoint(folder / "other.safetensors", SD1_KEY)
    table = ModelSettings(source=str(file), prediction="v", zero_terminal_snr=True, steps=28, cfg_rescale=0.7)
    settings = EngineSettings(model_dirs=(str(folder),), models={"noob": table})
    assert catalog.model_names(settings) == ["noob", "other"]  # listed once, by its configured name
    for name, allow_paths in (("noob", False), ("xl/noobai-vpred", False), (str(file), True)):
        source = models.resolve_model(settings, name, allow_paths=allow_paths)
        assert (source.name, source.prediction, source.zero_terminal_snr) == ("noob", "v", True), name
        defaults = _model_defaults(settings, name)  # chant generate's (paths too); the service's for names
        assert defaults.fields() == {"width": 1024, "height": 1024, "steps": 28, "cfg_rescale": 0.7}, name
        if not allow_paths:
            assert catalog.model_defaults(settings, name) == defaults
    other = models.resolve_model(settings, "other")
    assert (other.name, other.prediction, other.zero_terminal_snr) == ("other", "auto", None)  # the file decides


def test_kinds_are_read_from_headers_and_folders_without_torch(tmp_path: Path) -> None:
    assert catalog.guess_kind(checkpoint(tmp_path / "a.safetensors", SDXL_KEY)) == "sdxl"
    assert catalog.guess_kind(checkpoint(tmp_path / "b.safetensors", "cond_stage_model.model.ln_final.weight")) == "sd2"
    assert catalog.guess_kind(checkpoint(tmp_path / "c.safetensors", SD1_KEY)) == "sd1"
    assert catalog.guess_kind(checkpoint(tmp_path / "d.safetensors", "lora_unet_x.alpha")) is None
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    assert catalog.guess_kind(junk) is None
    with pytest.raises(ValueError, match=r"not a \.safetensors file"):
        catalog.safetensors_keys(junk)
    (tmp_path / "xl" / "text_encoder_2").mkdir(parents=True)
    assert catalog.guess_kind(tmp_path / "xl") == "sdxl"
