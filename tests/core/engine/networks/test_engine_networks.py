"""Extra networks through the real DiffusersEngine on the tiny models.

The issue's end-to-end promise: a plain job after a LoRA job equals the same plain job before it,
bit for bit (the PNG bytes, A1111 parameters included).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.engine.networks.lora import _ldm_prefixes, ldm_name
from core.types import GenerationError, GenerationRequest
from tests.core.engine.conftest import engine_settings


def pixels(result) -> bytes:
    """The decoded RGB bytes (the PNG also holds the prompt, which differs between these jobs)."""
    with Image.open(io.BytesIO(result.images[0].png)) as image:
        return image.convert("RGB").tobytes()


SMALL = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler", "seed": 5}


def _random_lora(pipe, *, sgm_names: bool) -> dict[str, torch.Tensor]:
    """Kohya-style rank-2 LoRA over every Linear of the UNet and the text encoder(s)."""
    # seed 11 makes the tiny text encoder's output mean exactly 0.0, and A1111's "Original" emphasis
    # (z * mean(z) / mean(z * m)) then divides 0 by 0: a quirk of identity LayerNorms, not of LoRA
    g = torch.Generator().manual_seed(12)
    tensors: dict[str, torch.Tensor] = {}
    prefixes = _ldm_prefixes(pipe.unet)
    parts = [("lora_unet_", pipe.unet)]
    encoders = [pipe.text_encoder, getattr(pipe, "text_encoder_2", None)]
    parts += [(p, e) for p, e in zip(("lora_te1_", "lora_te2_"), encoders, strict=True) if e is not None]
    for prefix, model in parts:
        for path, module in model.named_modules():
            if not isinstance(module, torch.nn.Linear):
                continue
            name = (
                ldm_name(path, prefixes) if sgm_names and prefix == "lora_unet_" else path.replace(".", "_")
            )
            if prefix != "lora_unet_" and not path.startswith("text_model."):
                name = "text_model_" + name
            key = prefix + name
            tensors[f"{key}.lora_down.weight"] = torch.randn(2, module.in_features, generator=g) * 0.3
            tensors[f"{key}.lora_up.weight"] = torch.randn(module.out_features, 2, generator=g) * 0.3
    return tensors


def _engine(tiny, folder: Path):
    from core.engine.diffusers_engine import DiffusersEngine

    return DiffusersEngine(
        engine_settings(tiny, lora_dirs=(str(folder / "Lora"),), hypernetwork_dirs=(str(folder / "hn"),))
    )


@pytest.mark.parametrize(("tiny_fixture", "sgm_names"), [("tiny_sd15", False), ("tiny_sdxl", True)])
def test_plain_job_after_a_lora_job_is_bit_identical(request, tmp_path, tiny_fixture, sgm_names) -> None:
    from safetensors.torch import save_file

    engine = _engine(request.getfixturevalue(tiny_fixture), tmp_path)
    try:
        plain = engine.generate(GenerationRequest(prompt="a house", **SMALL))
        model = next(iter(engine.models._models.values()))
        (tmp_path / "Lora").mkdir()
        save_file(_random_lora(model.pipe, sgm_names=sgm_names), str(tmp_path / "Lora" / "style.safetensors"))
        before = {k: v.clone() for k, v in model.pipe.unet.state_dict().items()}

        styled = engine.generate(GenerationRequest(prompt="a house <lora:style:0.8>", **SMALL))
        te_only = engine.generate(GenerationRequest(prompt="a house <lora:style:0.8:0>", **SMALL))
        again = engine.generate(GenerationRequest(prompt="a house", **SMALL))

        assert again.images[0].png == plain.images[0].png
        assert all(torch.equal(v, before[k]) for k, v in model.pipe.unet.state_dict().items())
        assert pixels(styled) != pixels(plain)
        assert pixels(te_only) not in (pixels(plain), pixels(styled))
        with pytest.raises(GenerationError, match=r"unknown LoRA 'stlye'; closest: style"):
            engine.generate(GenerationRequest(prompt="a house <lora:stlye:1>", **SMALL))
        with pytest.raises(GenerationError, match="leaves the LoRA folder"):
            engine.generate(GenerationRequest(prompt="a house <lora:../../etc/passwd:1>", **SMALL))
        assert (
            engine.generate(GenerationRequest(prompt="a house", **SMALL)).images[0].png == plain.images[0].png
        )
    finally:
        engine.close()


def test_hypernetwork_and_lora_together_then_plain(tiny_sd15, tmp_path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(3)
    layer = {
        "linear.0.weight": torch.randn(64, 32, generator=g) * 0.3,
        "linear.0.bias": torch.zeros(64),
        "linear.1.weight": torch.randn(32, 64, generator=g) * 0.3,
        "linear.1.bias": torch.zeros(32),
    }
    (tmp_path / "hn").mkdir()
    torch.save(
        {32: (layer, dict(layer)), "name": "hn", "layer_structure": [1, 2, 1]}, tmp_path / "hn" / "tiny_hn.pt"
    )
    engine = _engine(tiny_sd15, tmp_path)
    try:
        plain = engine.generate(GenerationRequest(prompt="a boat", **SMALL))
        model = next(iter(engine.models._models.values()))
        (tmp_path / "Lora").mkdir()
        save_file(_random_lora(model.pipe, sgm_names=False), str(tmp_path / "Lora" / "style.safetensors"))
        hn = engine.generate(GenerationRequest(prompt="a boat <hypernet:tiny_hn:0.7>", **SMALL))
        both = engine.generate(
            GenerationRequest(prompt="a boat <hypernet:tiny_hn:0.7> <lora:style:0.5>", **SMALL)
        )
        assert len({pixels(plain), pixels(hn), pixels(both)}) == 3
        assert (
            engine.generate(GenerationRequest(prompt="a boat", **SMALL)).images[0].png == plain.images[0].png
        )
        assert all(not m._forward_pre_hooks for m in model.pipe.unet.modules())
    finally:
        engine.close()


def test_results_name_their_loras_and_embeddings_by_hash_as_a1111(tiny_sd15, tmp_path) -> None:
    import hashlib

    from safetensors.torch import save_file

    from core.engine.diffusers_engine import DiffusersEngine
    from core.engine.infotext import parse_hashes, parse_infotext
    from tests.core.engine.conftest import engine_settings

    (tmp_path / "emb").mkdir()
    save_file({"emb_params": torch.randn(1, 32)}, str(tmp_path / "emb" / "shiny.safetensors"))
    ti = hashlib.sha256((tmp_path / "emb" / "shiny.safetensors").read_bytes()).hexdigest()[:12]
    settings = engine_settings(
        tiny_sd15, lora_dirs=(str(tmp_path / "Lora"),), embedding_dirs=(str(tmp_path / "emb"),)
    )
    engine = DiffusersEngine(settings)
    try:
        engine.generate(GenerationRequest(prompt="warm up", **SMALL))
        model = next(iter(engine.models._models.values()))
        (tmp_path / "Lora").mkdir()
        save_file(_random_lora(model.pipe, sgm_names=False), str(tmp_path / "Lora" / "style.safetensors"))
        data = (tmp_path / "Lora" / "style.safetensors").read_bytes()
        lora_hash = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()[:12]
        result = engine.generate(
            GenerationRequest(prompt="a shiny boat <lora:style:0.5>", negative_prompt="shiny", **SMALL)
        )
        text = result.images[0].infotext
        assert f'Lora hashes: "style: {lora_hash}"' in text
        assert f'TI hashes: "shiny: {ti}, shiny: {ti}"' in text  # positive's, then the negative's
        with Image.open(io.BytesIO(result.images[0].png)) as image:
            assert image.text["parameters"] == text
        params = parse_infotext(text)
        assert parse_hashes(params["Lora hashes"]) == {"style": lora_hash}
        assert parse_hashes(params["TI hashes"]) == {"shiny": ti}
        plain = engine.generate(GenerationRequest(prompt="a boat", **SMALL)).images[0].infotext
        assert "Lora hashes" not in plain and "TI hashes" not in plain
    finally:
        engine.close()
