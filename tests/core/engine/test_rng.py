import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from core.engine.rng import ImageRNG, NVPhilox, latent_shape, philox4x32_10, randn, slerp

DATA = Path(__file__).parents[2] / "data"
CUDA_REF = json.loads((DATA / "cuda_randn_h100.json").read_text())
MEASURED = [c for c in CUDA_REF["cases"] if "first" in c]
VIA_GLOBAL = [c for c in CUDA_REF["cases"] if c.get("via") == "torch.manual_seed"]
# Known answers of A1111's NV source: its modules/rng_philox.py run outside this repository (AGPL; see the
# file's "how"): several seeds, consecutive draws, and draws above 2112x2112 pixels (4x264x264 and more).
A1111_NV = json.loads((DATA / "a1111_nv_randn.json").read_text())


def _case_id(c):
    return f"seed{c['seed']}-{'x'.join(map(str, c['shape']))}"


# -- nv: A1111's NV source ----------------------------------------------------------------------------


def test_philox_known_answer():
    # Random123's published known-answer vector for philox4x32_10 (counter 0, key 0).
    z = np.zeros(1, dtype=np.uint32)
    out = philox4x32_10((z, z, z, z), (0, 0))
    assert [int(w[0]) for w in out] == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


@pytest.mark.parametrize("case", A1111_NV["cases"], ids=lambda c: f"seed{c['seed']}")
def test_nv_is_a1111s_nv_bit_for_bit(case):
    generator = NVPhilox(case["seed"])
    for draw in case["draws"]:  # in order: each draw moves the generator's offset on by one
        out = generator.randn(draw["shape"])
        assert out.shape == tuple(draw["shape"]) and out.dtype == np.float32
        flat = out.reshape(-1)
        assert flat[:8].tolist() == draw["first"] and flat[-4:].tolist() == draw["last"]
        assert hashlib.sha256(out.tobytes()).hexdigest() == draw["sha256_f32"]


def test_nv_known_answers_cover_large_latents():
    sizes = [int(np.prod(d["shape"])) for c in A1111_NV["cases"] for d in c["draws"]]
    assert max(sizes) > 4 * 264 * 264 > 270_336  # above 2112x2112 pixels, where CUDA's own layout changes


@pytest.mark.parametrize("case", MEASURED, ids=_case_id)
def test_nv_is_close_to_real_cuda_for_small_draws(case):
    # An independent check of the algorithm: up to 270,336 values CUDA's torch.randn uses the same counter
    # layout, and differs only by its approximate __sincosf (measured on an H100, tests/data).
    flat = NVPhilox(case["seed"]).randn(case["shape"]).reshape(-1)
    np.testing.assert_allclose(flat[: len(case["first"])], case["first"], rtol=0, atol=3e-6)
    np.testing.assert_allclose(flat[-len(case["last"]) :], case["last"], rtol=0, atol=3e-6)
    assert abs(flat.astype(np.float64).sum() - case["sum"]) < 1e-7 * flat.size + 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("case", MEASURED + VIA_GLOBAL, ids=_case_id)
def test_gpu_source_on_cuda_is_torch_randn(case):
    out = randn(case["seed"], case["shape"], "gpu", "cuda").cpu().numpy()
    assert hashlib.sha256(out.tobytes()).hexdigest() == case["sha256_f32"]


def test_nv_stream_continues():
    g = NVPhilox(3)
    a, b = g.randn((4, 8, 8)), g.randn((4, 8, 8))
    assert not np.array_equal(a, b)
    assert np.array_equal(a, NVPhilox(3).randn((4, 8, 8)))
    assert g.offset == 2


def test_nv_speed_smoke():
    # Not a benchmark; guards against a de-vectorised rewrite.
    NVPhilox(0).randn((4, 128, 128))
    t = time.perf_counter()
    NVPhilox(0).randn((4, 128, 128))
    assert time.perf_counter() - t < 0.5


@pytest.mark.parametrize("seed", [-1, 2**64, 1.5, "1"])
def test_bad_seed_is_refused(seed):
    with pytest.raises(ValueError, match="seed"):
        NVPhilox(seed)


def test_latent_shape():
    assert latent_shape(512, 768) == (4, 96, 64)
    assert latent_shape(1024, 1024, channels=4) == (4, 128, 128)
    for w, h in [(500, 512), (512, 0), (512.0, 512)]:
        with pytest.raises(ValueError, match="multiple of 8"):
            latent_shape(w, h)


def test_unknown_source_is_refused():
    with pytest.raises(ValueError, match="gpu, cpu, nv"):
        randn(1, (4, 8, 8), source="quantum")


# -- sources and seeds --------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["gpu", "cpu", "nv"])
def test_randn_is_deterministic(source):
    a = randn(123, (4, 8, 8), source)
    b = randn(123, (4, 8, 8), source)
    assert a.dtype == torch.float32 and a.shape == (4, 8, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, randn(124, (4, 8, 8), source))


def test_gpu_source_without_cuda_falls_back_to_cpu_generator():
    expected = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(99))
    assert torch.equal(randn(99, (4, 8, 8), "gpu", "cpu"), expected)
    assert torch.equal(randn(99, (4, 8, 8), "cpu", "cpu"), expected)


def test_nv_source_is_the_philox_stream():
    assert torch.equal(randn(5, (4, 8, 8), "nv"), torch.from_numpy(NVPhilox(5).randn((4, 8, 8))))


@pytest.mark.parametrize("source", ["cpu", "nv"])
def test_image_i_uses_seed_plus_i(source):
    rng = ImageRNG((4, 8, 8), seeds=[10, 11, 12], source=source)
    x = rng.first()
    assert x.shape == (3, 4, 8, 8)
    for i in range(3):
        assert torch.equal(x[i], randn(10 + i, (4, 8, 8), source))


def test_next_before_first_is_first_then_step_noise_continues_each_stream():
    rng = ImageRNG((4, 8, 8), seeds=[1, 2], source="cpu")
    first = rng.next()
    step = rng.next()
    for i, seed in enumerate([1, 2]):
        g = torch.Generator("cpu").manual_seed(seed)
        assert torch.equal(first[i], torch.randn((4, 8, 8), generator=g))
        assert torch.equal(step[i], torch.randn((4, 8, 8), generator=g))


def test_ensd_reseeds_step_noise_only():
    plain = ImageRNG((4, 8, 8), seeds=[1, 2], source="cpu")
    ensd = ImageRNG((4, 8, 8), seeds=[1, 2], source="cpu", eta_noise_seed_delta=31337)
    assert torch.equal(plain.first(), ensd.first())
    step = ensd.next()
    for i, seed in enumerate([1, 2]):
        assert torch.equal(step[i], randn(seed + 31337, (4, 8, 8), "cpu"))
    assert not torch.equal(step, plain.next())


@pytest.mark.parametrize("source", ["cpu", "nv"])
def test_variation_strength_endpoints(source):
    base = ImageRNG((4, 8, 8), seeds=[7], source=source).first()
    sub = randn(99, (4, 8, 8), source)
    zero = ImageRNG((4, 8, 8), seeds=[7], subseeds=[99], subseed_strength=0.0, source=source).first()
    one = ImageRNG((4, 8, 8), seeds=[7], subseeds=[99], subseed_strength=1.0, source=source).first()
    half = ImageRNG((4, 8, 8), seeds=[7], subseeds=[99], subseed_strength=0.5, source=source).first()
    assert torch.equal(zero, base)
    torch.testing.assert_close(one[0], sub, rtol=0, atol=1e-5)
    assert not torch.allclose(half[0], base[0]) and not torch.allclose(half[0], sub)
    # slerp keeps the noise's scale, unlike a linear mix
    assert abs(half.std().item() - 1.0) < 0.2


def test_slerp_matches_its_formula_midpoint():
    g = torch.Generator().manual_seed(0)
    low, high = torch.randn((4, 8, 8), generator=g), torch.randn((4, 8, 8), generator=g)
    mid = slerp(0.5, low, high)
    ln, hn = low / low.norm(dim=1, keepdim=True), high / high.norm(dim=1, keepdim=True)
    omega = torch.acos((ln * hn).sum(1)).unsqueeze(1)
    expected = (torch.sin(0.5 * omega) / torch.sin(omega)) * (low + high)
    torch.testing.assert_close(mid, expected)


def test_bad_variation_strength_is_refused():
    with pytest.raises(ValueError, match="variation strength"):
        ImageRNG((4, 8, 8), seeds=[1], subseeds=[2], subseed_strength=1.5)
