"""Step noise for the samplers, per image, as A1111 draws it.

A sampler asks for noise as ``noise(sigma, sigma_next)`` (k-diffusion's noise-sampler protocol) and gets
one row per image:

- :class:`StepNoise`: the next draw of each image's own generator (``ImageRNG.next()``), what A1111's
  ``TorchHijack`` hands k-diffusion's ``torch.randn_like``: ancestral samplers, Restart, LCM, DDIM with η.
- :class:`BrownianNoise`: one ``torchsde.BrownianTree`` per image, seeded with the image's seed over
  [smallest positive σ, largest σ] of the full schedule (A1111's ``create_noise_sampler``), for the SDE
  samplers. torchsde draws its normals with ``_randn(size, dtype, device, seed)``; A1111 replaces that
  function with its ``randn_local``, which follows the RNG source. We do the same per tree and per
  thread: while one of our trees is queried, the thread's draws come from that tree's source; every
  other caller (another thread, diffusers' own Brownian trees) still reaches torchsde's original.

Both keep one entry per image, so :meth:`select` can drop the rows of a job cancelled in a running
batch; each image's numbers are those it would get alone.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch
from torch import Tensor

from core.engine import rng as rng_mod


class NoiseSampler(Protocol):
    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor: ...

    def select(self, rows: Sequence[int]) -> NoiseSampler: ...


class StepNoise:
    """``ImageRNG.next()`` as a noise sampler (the sigmas are ignored, as A1111's ``randn_like`` ignores them)."""

    def __init__(self, image_rng: rng_mod.ImageRNG, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.image_rng = image_rng
        self.device = device
        self.dtype = dtype

    def __call__(self, sigma: Tensor | None = None, sigma_next: Tensor | None = None) -> Tensor:
        return self.image_rng.next().to(device=self.device, dtype=self.dtype)

    def select(self, rows: Sequence[int]) -> StepNoise:
        return StepNoise(self.image_rng.select(rows), device=self.device, dtype=self.dtype)


# The trees span exactly [σ_min, σ_max] in float64 while queries come as float32 sigmas, so torchsde warns that
# an end lies a rounding error outside and clamps it, as it does in A1111; the warning says nothing here.
warnings.filterwarnings("ignore", message=r"Should have (ta>=t0|tb<=t1)", category=UserWarning, module=r"torchsde")

# -- torchsde's normals from the image's RNG source -----------------------------------------------------

_local = threading.local()
_install_lock = threading.Lock()
_original_randn: Callable[..., Tensor] | None = None


def _dispatch(size: Sequence[int], dtype: torch.dtype, device: torch.device, seed: int) -> Tensor:
    source = getattr(_local, "source", None)
    if source is None:
        assert _original_randn is not None
        return _original_randn(size, dtype, device, seed)
    # A1111's randn_local: a fresh generator of the source seeded with torchsde's seed, float32, then cast.
    return rng_mod.randn(int(seed), tuple(size), source, device).to(device=device, dtype=dtype)


def _install() -> None:
    """Route torchsde's ``_randn`` through :func:`_dispatch` (once; a no-op for callers outside our trees)."""
    global _original_randn
    import torchsde._brownian.brownian_interval as bi

    with _install_lock:
        if bi._randn is not _dispatch:
            _original_randn = bi._randn
            bi._randn = _dispatch


@contextlib.contextmanager
def _drawing_from(source: str) -> Iterator[None]:
    previous = getattr(_local, "source", None)
    _local.source = source
    try:
        yield
    finally:
        _local.source = previous


class BrownianNoise:
    """Per-image Brownian-tree noise, k-diffusion's ``BrownianTreeNoiseSampler`` with one tree per seed.

    ``sigmas`` is the full schedule (img2img too: A1111 seeds the trees over the whole schedule, not its
    tail); ``shape`` one image's latent shape; ``source`` the job's RNG source ("gpu", "cpu", "nv").
    """

    def __init__(self, sigmas: Tensor, seeds: Sequence[int], shape: Sequence[int], *, source: str = "gpu",
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        import torchsde

        _install()
        sigmas = sigmas.cpu()
        t0, t1 = sigmas[sigmas > 0].min(), sigmas.max()
        self.source = source
        w0 = torch.zeros(tuple(shape), device=device, dtype=dtype)
        with _drawing_from(source):
            self.trees = [torchsde.BrownianTree(t0, w0, t1, entropy=int(s)) for s in seeds]

    @classmethod
    def _of(cls, trees: list, source: str) -> BrownianNoise:
        out = cls.__new__(cls)
        out.trees, out.source = trees, source
        return out

    def __call__(self, sigma: Tensor, sigma_next: Tensor) -> Tensor:
        sigma, sigma_next = torch.as_tensor(sigma), torch.as_tensor(sigma_next)
        # The trees span t0 < t1 and the samplers walk σ downwards: query the sorted pair, flip the sign.
        sign = 1 if sigma < sigma_next else -1
        low, high = (sigma, sigma_next) if sign == 1 else (sigma_next, sigma)
        with _drawing_from(self.source):
            w = torch.stack([tree(low, high) for tree in self.trees]) * sign
        return w / (sigma_next - sigma).abs().sqrt()

    def select(self, rows: Sequence[int]) -> BrownianNoise:
        return BrownianNoise._of([self.trees[i] for i in rows], self.source)
