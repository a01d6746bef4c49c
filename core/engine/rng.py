"""Initial and per-step noise with AUTOMATIC1111's seed semantics.

A1111 draws the noise of image ``i`` of a job from ``seed + i`` with shape ``(C, H/8, W/8)``, from one of
three sources:

- ``"gpu"``: a ``torch.Generator`` on the CUDA device (A1111's default). On a machine without CUDA
  (or on MPS) A1111 falls back to the CPU generator, and so do we.
- ``"cpu"``: a CPU ``torch.Generator``; the same numbers on every machine.
- ``"nv"``: A1111's "NV" source (:class:`NVPhilox`): its numpy imitation of CUDA's ``torch.randn``, the
  same numbers on every machine, bit for bit A1111's.

:class:`ImageRNG` is the per-job object: ``first()`` gives the initial latent noise (variation seed slerp
included), ``next()`` the noise an ancestral sampler draws during sampling (A1111's ``TorchHijack`` hands k-diffusion
exactly that), with ENSD re-seeding after ``first()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

SOURCES = ("gpu", "cpu", "nv")
_MAX_SEED = 2**64 - 1


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed {seed} is outside 0..2**64-1")
    return seed


def _check_source(source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown RNG source {source!r}; use one of: {', '.join(SOURCES)}")
    return source


# -- A1111's "NV" source ------------------------------------------------------------------------------
#
# A1111's NV source imitates CUDA's torch.randn on any device. Written from the published algorithms, to
# give A1111's numbers bit for bit:
# - Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): 128-bit counter
#   (c0, c1, c2, c3), 64-bit key (seed low word, high word), 10 rounds, key bumped by the Weyl constants
#   between rounds.
# - One counter per element: element i of a draw is counter (offset, 0, i, 0), where offset counts the
#   generator's draws so far; only the first two output words are used.
# - Box-Muller on those two words in float64, u = x·c + c/2 and v = y·c' + c'/2 with the float32 constants
#   c = 2^-32 and c' = 2^-32·2π, giving sqrt(-2 ln u)·sin v, rounded once to float32.
# On a GPU, CUDA uses this layout only up to 256 × the resident thread blocks (270,336 values on an H100)
# and approximates sin with __sincosf, so real CUDA numbers agree with these to ~1e-6 on small draws and
# not at all on large ones; A1111's NV numbers are these, on every machine and at every size.

_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85
_U32 = 0xFFFFFFFF
_SHIFT32 = np.uint64(32)
_TWO_POW32_INV = np.float64(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = np.float64(np.float32(2.3283064e-10 * 6.2831855))


def philox4x32_10(
    ctr: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], key: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Philox4x32-10 of uint32 counter words ``ctr`` under the 64-bit key ``(low, high)``."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for rnd in range(10):
        p0 = c0.astype(np.uint64) * _PHILOX_M0
        p1 = c2.astype(np.uint64) * _PHILOX_M1
        c0, c1, c2, c3 = (
            (p1 >> _SHIFT32).astype(np.uint32) ^ c1 ^ np.uint32(k0),
            p1.astype(np.uint32),
            (p0 >> _SHIFT32).astype(np.uint32) ^ c3 ^ np.uint32(k1),
            p0.astype(np.uint32),
        )
        if rnd < 9:
            k0 = (k0 + _PHILOX_W0) & _U32
            k1 = (k1 + _PHILOX_W1) & _U32
    return c0, c1, c2, c3


class NVPhilox:
    """A1111's NV generator: ``seed``'s stream of float32 normals, each ``randn`` call one counter offset."""

    def __init__(self, seed: int) -> None:
        self.seed = _check_seed(seed)
        self.offset = 0

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        n = int(np.prod(shape, dtype=np.int64))
        offset = self.offset
        self.offset += 1
        if n == 0:
            return np.zeros(shape, dtype=np.float32)
        index = np.arange(n, dtype=np.uint64)
        c0 = np.full(n, offset & _U32, dtype=np.uint32)
        c1 = np.full(n, (offset >> 32) & _U32, dtype=np.uint32)
        # A1111 counts elements in one 32-bit word (wrapping past 2^32 values, far beyond any latent).
        c2 = (index & np.uint64(_U32)).astype(np.uint32)
        c3 = np.zeros(n, dtype=np.uint32)
        x, y, _, _ = philox4x32_10((c0, c1, c2, c3), (self.seed & _U32, self.seed >> 32))
        u = x.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
        v = y.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
        out = np.sqrt(-2.0 * np.log(u)) * np.sin(v)
        return out.astype(np.float32).reshape(shape)


# -- sources -----------------------------------------------------------------------------------------


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


class _Generator:
    """One per-image generator of a source; ``randn(shape)`` continues its stream."""

    def __init__(self, seed: int, source: str, device: torch.device) -> None:
        self.device = device
        self._nv: NVPhilox | None = None
        self._torch: torch.Generator | None = None
        if source == "nv":
            self._nv = NVPhilox(seed)
            return
        gen_device = device if source == "gpu" and device.type == "cuda" else torch.device("cpu")
        self._torch = torch.Generator(gen_device).manual_seed(seed)

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        if self._nv is not None:
            return _onto(torch.from_numpy(self._nv.randn(shape)), self.device)
        assert self._torch is not None
        out = torch.randn(tuple(shape), generator=self._torch, device=self._torch.device, dtype=torch.float32)
        return _onto(out, self.device)


def _onto(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``. Host noise goes to a GPU through pinned memory without waiting: a plain copy
    from pageable memory waits for everything queued on the GPU, a host sync at every sampler step."""
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def create_generator(seed: int, source: str = "gpu", device: str | torch.device = "cpu") -> _Generator:
    """A generator of ``source`` seeded with ``seed`` whose draws land on ``device``."""
    return _Generator(_check_seed(seed), _check_source(source), _device(device))


def randn(
    seed: int, shape: Sequence[int], source: str = "gpu", device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Float32 noise of ``shape`` as A1111's ``randn(seed, shape)`` gives it for ``source``."""
    return create_generator(seed, source, device).randn(shape)


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's variation-seed slerp: ``val`` 0 gives ``low``, 1 gives ``high``.

    Like A1111, vectors are normalised along dim 1 and nearly parallel inputs fall back to A1111's linear
    mix ``low * val + high * (1 - val)`` (kept as A1111 writes it; the inputs are then nearly equal).
    """
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(
        1
    ) * high


def latent_shape(width: int, height: int, channels: int = 4) -> tuple[int, int, int]:
    """One image's latent noise shape ``(C, H/8, W/8)``; width and height must be positive multiples of 8."""
    for label, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % 8:
            raise ValueError(f"{label} must be a positive multiple of 8, got {value!r}")
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"latent channels must be a positive integer, got {channels!r}")
    return (channels, height // 8, width // 8)


class ImageRNG:
    """Per-image noise for one job, as A1111's ``rng.ImageRNG``.

    ``shape`` is one image's latent shape ``(C, H/8, W/8)``; ``seeds[i]`` seeds image i. ``first()`` returns
    the stacked initial noise (slerped towards ``subseeds[i]``'s noise by ``subseed_strength``); then, if
    ``eta_noise_seed_delta`` is non-zero, each image's generator is re-seeded with ``seed + ENSD``.
    ``next()`` draws one more sample per image from those generators (the sampler's step noise). As in
    A1111, the first ``next()`` before any ``first()`` returns ``first()``. Unlike A1111, calling
    ``first()`` directly also counts as that first draw, so a following ``next()`` gives step noise.
    """

    def __init__(
        self,
        shape: Sequence[int],
        seeds: Sequence[int],
        subseeds: Sequence[int] | None = None,
        subseed_strength: float = 0.0,
        source: str = "gpu",
        device: str | torch.device = "cpu",
        eta_noise_seed_delta: int = 0,
    ) -> None:
        self.shape = tuple(int(d) for d in shape)
        if not seeds:
            raise ValueError("ImageRNG needs at least one seed")
        self.seeds = [_check_seed(s) for s in seeds]
        self.subseeds = None if subseeds is None else [_check_seed(s) for s in subseeds]
        if not 0.0 <= float(subseed_strength) <= 1.0:
            raise ValueError(f"variation strength must be within 0..1, got {subseed_strength}")
        self.subseed_strength = float(subseed_strength)
        self.source = _check_source(source)
        self.device = _device(device)
        self.eta_noise_seed_delta = int(eta_noise_seed_delta or 0)
        self.generators = [_Generator(s, self.source, self.device) for s in self.seeds]
        self.is_first = True

    def first(self) -> torch.Tensor:
        self.is_first = False
        xs = []
        for i, generator in enumerate(self.generators):
            noise = generator.randn(self.shape)
            if self.subseeds is not None and self.subseed_strength != 0:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                subnoise = randn(subseed, self.shape, self.source, self.device)
                noise = slerp(self.subseed_strength, noise, subnoise)
            xs.append(noise)
        if self.eta_noise_seed_delta:
            self.generators = [
                _Generator(_check_seed(s + self.eta_noise_seed_delta), self.source, self.device)
                for s in self.seeds
            ]
        return torch.stack(xs)

    def next(self) -> torch.Tensor:
        if self.is_first:
            return self.first()
        return torch.stack([g.randn(self.shape) for g in self.generators])

    def select(self, rows: Sequence[int]) -> ImageRNG:
        """This RNG for only the images ``rows`` (in that order), sharing their generators' state.

        For a batch that drops a cancelled job's images between steps: the kept images go on drawing exactly
        what they would have drawn.
        """
        out = ImageRNG.__new__(ImageRNG)
        out.__dict__.update(self.__dict__)
        out.seeds = [self.seeds[i] for i in rows]
        out.subseeds = None if self.subseeds is None else [self.subseeds[i] if i < len(self.subseeds) else 0 for i in rows]
        out.generators = [self.generators[i] for i in rows]
        return out
