"""engine.device: CUDA asked for but unusable is an error with the reason; ``auto`` on the CPU says why."""

from __future__ import annotations

import logging
import types

import pytest
import torch

from core.config import EngineSettings
from core.engine import models
from core.engine.models import ModelError, cuda_unusable_reason, torch_device_and_dtype


def _fake_torch(*, cuda: str | None, init_error: Exception | None = None, count: int = 1):
    def init() -> None:
        if init_error:
            raise init_error

    cuda_mod = types.SimpleNamespace(init=init, device_count=lambda: count, is_available=lambda: count > 0)
    return types.SimpleNamespace(__version__="9.9", version=types.SimpleNamespace(cuda=cuda), cuda=cuda_mod)


@pytest.mark.parametrize(
    ("fake", "reason"),
    [
        (_fake_torch(cuda=None), "CPU-only build; install a CUDA build"),
        (_fake_torch(cuda="12.8", init_error=RuntimeError("Found no NVIDIA driver")), "cannot start CUDA: Found no NVIDIA driver"),
        (_fake_torch(cuda="12.8", count=0), "no CUDA GPU is visible"),
    ],
)
def test_the_reason_cuda_is_unusable(fake, reason) -> None:
    assert reason in cuda_unusable_reason(fake)
    assert cuda_unusable_reason(_fake_torch(cuda="12.8")) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_requested_but_unusable_is_an_error_not_a_cpu_run(device) -> None:
    with pytest.raises(ModelError, match=rf"engine.device = '{device}', but CUDA is unusable: .*CPU-only build"):
        torch_device_and_dtype(EngineSettings(device=device))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_auto_on_the_cpu_warns_with_the_reason(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=models.__name__):
        dev, dtype = torch_device_and_dtype(EngineSettings(device="auto"))
    assert (dev.type, dtype) == ("cpu", torch.float32)
    (record,) = [r for r in caplog.records if r.name == models.__name__]
    assert record.levelno == logging.WARNING
    assert "running on the CPU (slow): this torch" in record.getMessage()


def test_a_gpu_index_beyond_the_machine_is_an_error(monkeypatch) -> None:
    monkeypatch.setattr(models, "cuda_unusable_reason", lambda torch: None)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ModelError, match=r"'cuda:3', but this machine has 1 CUDA GPU\(s\) \(cuda:0 to cuda:0\)"):
        torch_device_and_dtype(EngineSettings(device="cuda:3"))


def test_a_bad_device_value_names_the_choices() -> None:
    with pytest.raises(ModelError, match=r"engine\.device must be auto, cpu, cuda or cuda:N, not 'gpu'"):
        torch_device_and_dtype(EngineSettings(device="gpu"))
