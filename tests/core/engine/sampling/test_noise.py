"""Step noise and Brownian-tree noise: per image, batch = alone, rows can leave, the RNG source is honoured."""

from __future__ import annotations

import threading

import torch
import torchsde

from core.engine.rng import ImageRNG, NVPhilox, randn
from core.engine.sampling.noise import BrownianNoise, StepNoise
from core.engine.sampling.schedules import karras

SIGMAS = karras(8, 0.0291675, 14.614642)


def _walk(noise, sigmas=SIGMAS):
    return [noise(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 2)]


def test_brownian_matches_k_diffusion_per_image_trees(kd):
    x = torch.zeros((2, 4, 8, 8))
    ref = kd.sampling.BrownianTreeNoiseSampler(x, SIGMAS[SIGMAS > 0].min(), SIGMAS.max(), seed=[5, 6])
    ours = BrownianNoise(SIGMAS, [5, 6], (4, 8, 8), source="cpu")
    for a, b in zip(_walk(ours), _walk(ref), strict=True):
        assert torch.equal(a, b)


def test_brownian_batch_equals_each_image_alone_and_rows_can_leave():
    both = BrownianNoise(SIGMAS, [5, 6, 7], (4, 8, 8), source="cpu")
    alone = BrownianNoise(SIGMAS, [7], (4, 8, 8), source="cpu")
    first = both(SIGMAS[0], SIGMAS[1])
    assert torch.equal(first[2], alone(SIGMAS[0], SIGMAS[1])[0])
    kept = both.select([2, 0])
    rest = _walk(kept, SIGMAS[1:])
    for step, out in zip(_walk(alone, SIGMAS[1:]), rest, strict=True):
        assert torch.equal(out[0], step[0])


def test_brownian_nv_source_draws_a1111s_nv_normals(monkeypatch):
    # A1111 replaces torchsde's _randn with randn_local: with the NV source, rng_philox.Generator(seed).randn.
    import torchsde._brownian.brownian_interval as bi

    ours = _walk(BrownianNoise(SIGMAS, [9], (4, 8, 8), source="nv"))
    monkeypatch.setattr(bi, "_randn", lambda size, dtype, device, seed: torch.from_numpy(
        NVPhilox(int(seed)).randn(tuple(size))).to(device=device, dtype=dtype))
    tree = torchsde.BrownianTree(SIGMAS[SIGMAS > 0].min(), torch.zeros((4, 8, 8)), SIGMAS.max(), entropy=9)
    for i, out in enumerate(ours):
        a, b = SIGMAS[i], SIGMAS[i + 1]
        assert torch.equal(out[0], -tree(b, a) / (b - a).abs().sqrt())


def test_torchsde_is_unchanged_for_other_callers():
    BrownianNoise(SIGMAS, [1], (4, 8, 8), source="nv")  # installs the dispatch
    tree = torchsde.BrownianTree(0.0, torch.zeros(3), 1.0, entropy=4)
    g = torch.Generator().manual_seed(0)
    torch.randn(1, generator=g)
    fresh = torchsde.BrownianTree(0.0, torch.zeros(3), 1.0, entropy=4)
    assert torch.equal(tree(0.2, 0.7), fresh(0.2, 0.7))


def test_brownian_sources_are_per_thread():
    def run(source, out, barrier):
        noise = BrownianNoise(SIGMAS, [3], (4, 8, 8), source=source)
        values = []
        for i in range(4):
            barrier.wait()
            values.append(noise(SIGMAS[i], SIGMAS[i + 1]))
        out[source] = values

    expected = {s: _walk(BrownianNoise(SIGMAS, [3], (4, 8, 8), source=s), SIGMAS[:6]) for s in ("cpu", "nv")}
    out, barrier = {}, threading.Barrier(2)
    threads = [threading.Thread(target=run, args=(s, out, barrier)) for s in ("cpu", "nv")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in ("cpu", "nv"):
        assert all(torch.equal(a, b) for a, b in zip(out[s], expected[s], strict=True))
    assert not torch.equal(out["cpu"][0], out["nv"][0])


def test_step_noise_is_image_rng_next_and_rows_can_leave():
    rng = ImageRNG((4, 8, 8), [1, 2, 3], source="cpu", eta_noise_seed_delta=7)
    rng.first()
    noise = StepNoise(rng)
    step = noise()
    for i, seed in enumerate([1, 2, 3]):
        assert torch.equal(step[i], randn(seed + 7, (4, 8, 8), "cpu"))
    kept = noise.select([2])
    g = torch.Generator().manual_seed(3 + 7)
    torch.randn((4, 8, 8), generator=g)
    assert torch.equal(kept()[0], torch.randn((4, 8, 8), generator=g))
