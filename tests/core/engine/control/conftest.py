"""Tiny pipelines and ControlNets for the control tests (built once per session, offline)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # Same bits every run, and no oversubscription on a shared 2-core box.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def sd15_pipe(tiny_sd15):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(str(tiny_sd15.folder), local_files_only=True).to("cpu")


@pytest.fixture(scope="session")
def sdxl_pipe(tiny_sdxl):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(str(tiny_sdxl.folder), local_files_only=True).to("cpu")


@pytest.fixture(scope="session")
def sd15_controlnet(sd15_pipe):
    from core.testing.tiny_control import tiny_controlnet

    return tiny_controlnet(sd15_pipe.unet, seed=1)


@pytest.fixture(scope="session")
def sdxl_controlnet(sdxl_pipe):
    from core.testing.tiny_control import tiny_controlnet

    return tiny_controlnet(sdxl_pipe.unet, seed=2)
