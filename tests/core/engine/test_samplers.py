"""The one table: names, schedule labels, A1111's facts per sampler, img2img steps, cancel and progress."""

from __future__ import annotations

import pytest
import torch

from core.engine.rng import ImageRNG
from core.engine.samplers import (
    SAMPLERS,
    eta_infotext,
    img2img_steps,
    is_second_order,
    plan,
    resolve,
    sample,
    sampler_names,
    uses_ensd,
)
from core.engine.sampling import SCHEDULE_TYPES, NoiseSchedule

A1111_SAMPLERS = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
    "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "LCM", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
]


def test_all_a1111_samplers_in_a1111s_order():
    from core import ranges

    assert sampler_names() == A1111_SAMPLERS == list(ranges.SAMPLERS)  # the bot's list without an engine


@pytest.mark.parametrize("name", A1111_SAMPLERS)
@pytest.mark.parametrize("schedule", list(SCHEDULE_TYPES))
def test_no_pair_is_refused(name, schedule):
    spec = resolve(name, schedule)
    assert spec.name == name and spec.schedule_label in SCHEDULE_TYPES
    p = plan(spec, 5, NoiseSchedule.ldm())
    assert len(p.run) >= 2


@pytest.mark.parametrize(("name", "schedule", "label"), [
    ("DPM++ 2M", "Automatic", "Karras"), ("DPM++ 2M SDE", None, "Exponential"), ("Euler", "Automatic", "Automatic"),
    ("DPM++ 2M Karras", "Automatic", "Karras"), ("k_dpmpp_2m_ka", None, "Karras"), ("k_euler_a", "beta", "Beta"),
    ("DPM++ SDE Exponential", None, "Exponential"), ("DDIM", "Karras", "Karras"), ("Restart", "", "Karras"),
])
def test_names_and_schedule_labels(name, schedule, label):
    assert resolve(name, schedule).schedule_label == label


def test_conflicting_and_unknown_names_are_refused():
    with pytest.raises(ValueError, match="already names schedule"):
        resolve("DPM++ 2M Karras", "Exponential")
    with pytest.raises(ValueError, match="unknown sampler 'Euler b'"):
        resolve("Euler b")


def test_a1111_facts():
    second = {n for n, s in SAMPLERS.items() if s.second_order}
    assert second == {"DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart"}
    assert {n for n, s in SAMPLERS.items() if s.discard_penultimate} == {"DPM++ 3M SDE", "DPM2", "DPM2 a"}
    assert {n for n, s in SAMPLERS.items() if s.brownian} == {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"}
    assert {n for n, s in SAMPLERS.items() if s.uses_ensd} == {"Euler a", "DPM++ 2S a", "DPM2 a", "DPM fast", "DPM adaptive"}
    assert SAMPLERS["Heun"].total_steps(20) == 40 and SAMPLERS["Euler"].total_steps(20) == 20
    assert uses_ensd(resolve("Euler a")) and not uses_ensd(resolve("Euler a"), eta=0) and not uses_ensd(resolve("DDIM"), 1)
    assert eta_infotext(resolve("Euler a"), 0.5) == {"Eta": 0.5} and eta_infotext(resolve("Euler a"), 1.0) == {}
    assert eta_infotext(resolve("DDIM"), 0.3) == {"Eta DDIM": 0.3} and eta_infotext(resolve("Euler"), 0.3) == {}


def test_discard_penultimate_sigma():
    model = NoiseSchedule.ldm()
    full = plan(resolve("DPM++ 2M", "Karras"), 6, model).sigmas  # 6 steps
    dpm2 = plan(resolve("DPM2", "Karras"), 5, model).sigmas  # Karras(6) without its next-to-last sigma
    assert torch.equal(dpm2, torch.cat([full[:-2], full[-1:]]))


@pytest.mark.parametrize(("steps", "strength", "fixed", "expected"), [
    (20, 0.75, False, (20, 15)), (20, 1.0, False, (20, 19)), (7, 0.3, False, (7, 2)),
    (10, 0.5, True, (20, 9)), (30, 0.7, True, (42, 29)), (15, 0.33, True, (45, 14)),
])
def test_img2img_steps_rule(steps, strength, fixed, expected):
    assert img2img_steps(steps, strength, fixed=fixed) == expected


def test_img2img_tail_and_start():
    model = NoiseSchedule.ldm()
    p = plan(resolve("Euler"), 20, model, denoising_strength=0.5)
    full = plan(resolve("Euler"), 20, model).sigmas
    assert torch.equal(p.run, full[20 - 10 - 1 :]) and len(p.run) == 12
    init, noise = torch.ones((1, 4, 8, 8)), torch.full((1, 4, 8, 8), 2.0)
    torch.testing.assert_close(p.start(noise, init), init + noise * p.run[0])


def test_callback_reports_every_step_and_can_cancel():
    model = NoiseSchedule.ldm()
    p = plan(resolve("Euler"), 5, model)
    rng = ImageRNG((4, 8, 8), [1], source="cpu")
    x = p.start(rng.first())
    seen = []
    sample(p, lambda x, s: x * 0.5, x, rng=rng, callback=lambda step: seen.append(step.i))
    assert seen == [0, 1, 2, 3, 4]

    class Cancelled(Exception):
        pass

    def cancel(step):
        if step.i == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        sample(p, lambda x, s: x * 0.5, x, rng=rng, callback=cancel)


@pytest.mark.parametrize("name", ["Euler a", "DPM++ 2M", "DPM++ 2M SDE", "LMS", "DDIM", "UniPC", "PLMS", "DPM++ SDE"])
def test_rows_can_leave_mid_run(name):
    """A cancelled job leaves a running batch: the others go on exactly as they would have."""
    model = NoiseSchedule.ldm()
    spec = resolve(name)
    p = plan(spec, 6, model)

    def toy(x, s):  # a row-wise model, so each row's result depends on its own inputs only
        return x * 0.3 + 0.1 if spec.sampler.kind == "timesteps" else x / (1 + s[:, None, None, None] ** 2)

    def run(seeds, callback=None):
        rng = ImageRNG((4, 8, 8), seeds, source="cpu")
        return sample(p, toy, p.start(rng.first()), rng=rng, callback=callback)

    dropped = run([1, 2, 3], lambda step: [0, 2] if step.i == 1 else None)
    assert dropped.shape[0] == 2
    torch.testing.assert_close(dropped, run([1, 2, 3])[[0, 2]], rtol=0, atol=1e-6)


def test_unknown_option_is_refused():
    p = plan(resolve("Euler"), 3, NoiseSchedule.ldm())
    rng = ImageRNG((4, 8, 8), [1], source="cpu")
    with pytest.raises(ValueError, match="s_chrun"):
        sample(p, lambda x, s: x, p.start(rng.first()), rng=rng, s_chrun=1.0)


def test_second_order_follows_the_name_and_its_aliases():
    assert is_second_order("Heun") and is_second_order("DPM++ 2S a Karras") and is_second_order("k_dpm_2")
    assert not is_second_order("Euler") and not is_second_order("DPM++ 2M")


@pytest.mark.parametrize("name", A1111_SAMPLERS)
@pytest.mark.parametrize(("steps", "strength"), [(6, None), (24, None), (10, 0.55)])
def test_plan_knows_how_many_steps_the_sampler_reports(name, steps, strength):
    """Progress counts the sampler's callbacks: Restart takes more than its steps from 20 on, DPM fast n // 3 + 1,
    UniPC one per timestep; DPM adaptive cannot know ahead."""
    spec = resolve(name)
    p = plan(spec, steps, NoiseSchedule.ldm(), denoising_strength=strength)
    timesteps = spec.sampler.kind == "timesteps"

    def toy(x, s):
        if timesteps:
            eps = x * 0.3 + 0.1
            return (eps, eps) if spec.sampler.cfgpp else eps
        return x / (1 + s[:, None, None, None] ** 2)

    seen = []
    rng = ImageRNG((4, 8, 8), [1], source="cpu")
    sample(p, toy, p.start(rng.first(), torch.zeros(1, 4, 8, 8) if strength else None), rng=rng,
           callback=lambda step: seen.append(step.i))
    assert p.callbacks == (None if name == "DPM adaptive" else len(seen))
    assert p.steps_run == (steps if strength is None else int(strength * steps) + 1)


def test_the_torch_free_sampler_lists_are_the_table_s() -> None:
    """core.ranges names the samplers for the bot and the second-order ones for the job cost (both
    torch-free); the engine's table is the truth they must match."""
    from core import ranges
    from core.engine import samplers

    assert tuple(samplers.SAMPLERS) == ranges.SAMPLERS
    second = {name for name, row in samplers.SAMPLERS.items() if row.second_order}
    assert second == set(ranges.SECOND_ORDER_SAMPLERS)
