import inspect
import json
from pathlib import Path

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSDEScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)

from core.engine.rng import ImageRNG, scheduler_noise
from core.engine.samplers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    eta_infotext,
    is_second_order,
    make_scheduler,
    resolve,
    sampler_names,
    schedule_types,
    scheduler_kwargs,
    uses_ensd,
)

DATA = Path(__file__).parents[2] / "data"
SD15 = json.loads((DATA / "sd15_scheduler_config.json").read_text())
SDXL = json.loads((DATA / "sdxl_scheduler_config.json").read_text())  # "leading" spacing, EulerDiscrete
A1111_NAMES = [
    "Euler", "Euler a", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M SDE", "DPM++ 2M SDE Heun",
    "DPM++ 3M SDE", "DPM++ SDE", "DPM++ 2S a", "DDIM", "PLMS", "UniPC", "LCM",
]  # fmt: skip


def _run(scheduler, steps=20, calls=4, seed=0):
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, 4, 8, 8), generator=g) * scheduler.init_noise_sigma
    for t in scheduler.timesteps[:calls]:
        model_input = scheduler.scale_model_input(x, t)
        eps = 0.1 * model_input
        kwargs = {"generator": g} if "generator" in inspect.signature(scheduler.step).parameters else {}
        x = scheduler.step(eps, t, x, **kwargs).prev_sample
    return x


def test_every_issue_sampler_is_a_row():
    assert sorted(sampler_names()) == sorted(A1111_NAMES)


@pytest.mark.parametrize("name", A1111_NAMES)
def test_every_sampler_builds_from_sd15_config_and_steps(name):
    scheduler = make_scheduler(SD15, name, "Automatic", seeds=[1])
    assert type(scheduler).__name__ == SAMPLERS[name].cls_name
    assert scheduler.config.beta_schedule == "scaled_linear"  # the model's config is kept
    x = _run(scheduler)
    assert x.shape == (1, 4, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize("name", A1111_NAMES)
def test_every_supported_schedule_type_builds_and_steps(name):
    for schedule in schedule_types(name):
        x = _run(make_scheduler(SD15, name, schedule, seeds=[1]), calls=2)
        assert torch.isfinite(x).all(), (name, schedule)


@pytest.mark.parametrize("name", A1111_NAMES)
def test_every_sampler_builds_from_sdxl_config(name):
    x = _run(make_scheduler(SDXL, name, seeds=[1]), calls=2)
    assert torch.isfinite(x).all()


def test_k_diffusion_automatic_uses_a1111_uniform_timesteps_even_on_sdxl_config():
    # A1111's k-diffusion get_sigmas: t = linspace(999, 0, steps); SDXL's config says "leading".
    sched = make_scheduler(SDXL, "Euler a")
    sched.set_timesteps(20)
    assert int(sched.timesteps[0]) == 999 and int(sched.timesteps[-1]) == 0


def test_a1111_automatic_defaults():
    # A1111 1.9+: options["scheduler"] of samplers_k_diffusion
    assert resolve("DPM++ 2M", "Automatic").schedule_type == "Karras"
    assert resolve("DPM++ SDE").schedule_type == "Karras"
    assert resolve("DPM2 a").schedule_type == "Karras"
    assert resolve("DPM++ 2M SDE").schedule_type == "Exponential"
    assert resolve("DPM++ 3M SDE").schedule_type == "Exponential"
    assert resolve("Euler a").schedule_type == "Automatic"
    spec = resolve("DPM++ 2M")
    assert spec.overrides["use_karras_sigmas"] is True
    assert resolve("DPM++ 2M SDE").overrides["use_exponential_sigmas"] is True
    assert resolve("Euler").overrides == {"timestep_spacing": "linspace"}


def test_karras_schedule_really_changes_sigmas():
    plain = make_scheduler(SD15, "Euler", "Uniform")
    karras = make_scheduler(SD15, "Euler", "Karras")
    plain.set_timesteps(20)
    karras.set_timesteps(20)
    assert karras.config.use_karras_sigmas and not plain.config.use_karras_sigmas
    assert not torch.allclose(plain.sigmas, karras.sigmas)


def test_sgm_uniform_is_trailing_spacing():
    sched = make_scheduler(SD15, "Euler", "SGM Uniform")
    sched.set_timesteps(10)
    assert sched.config.timestep_spacing == "trailing"
    assert int(sched.timesteps[0]) == 999


def test_specific_classes_and_overrides():
    assert isinstance(make_scheduler(SD15, "Euler a", "Automatic"), EulerAncestralDiscreteScheduler)
    assert isinstance(make_scheduler(SD15, "Euler"), EulerDiscreteScheduler)
    heun = make_scheduler(SD15, "DPM++ 2M SDE Heun")
    assert isinstance(heun, DPMSolverMultistepScheduler)
    assert heun.config.algorithm_type == "sde-dpmsolver++" and heun.config.solver_type == "heun"
    assert make_scheduler(SD15, "DPM++ 3M SDE").config.solver_order == 3


@pytest.mark.parametrize(
    ("old", "sampler", "schedule"),
    [
        ("DPM++ 2M Karras", "DPM++ 2M", "Karras"),
        ("DPM++ SDE Karras", "DPM++ SDE", "Karras"),
        ("DPM++ 2M SDE Exponential", "DPM++ 2M SDE", "Exponential"),
        ("LMS Karras", "LMS", "Karras"),
        ("Euler SGM Uniform", "Euler", "SGM Uniform"),
        ("euler a", "Euler a", "Automatic"),
        ("k_dpmpp_2m", "DPM++ 2M", "Karras"),
    ],
)
def test_old_combined_names_and_aliases(old, sampler, schedule):
    spec = resolve(old)
    assert (spec.name, spec.schedule_type) == (sampler, schedule)


def test_combined_name_conflicting_with_explicit_schedule_is_refused():
    with pytest.raises(ValueError, match="already names schedule"):
        resolve("DPM++ 2M Karras", "Exponential")
    assert resolve("DPM++ 2M Karras", "Karras").schedule_type == "Karras"


@pytest.mark.parametrize("name", ["Restart", "DPM fast", "DPM adaptive", "DPM adaptive Karras", "DDIM CFG++"])
def test_a1111_samplers_we_cannot_run_are_refused_clearly(name):
    with pytest.raises(ValueError, match="exists in A1111 but chant cannot run it") as err:
        resolve(name)
    assert "Euler a" in str(err.value)


@pytest.mark.parametrize("name", ["", "Euler b", "DPM++ 9M"])
def test_unknown_samplers_are_refused(name):
    with pytest.raises(ValueError, match="sampler"):
        resolve(name)


@pytest.mark.parametrize("schedule", ["Polyexponential", "KL Optimal", "Align Your Steps", "Normal", "DDIM"])
def test_schedules_diffusers_cannot_do_are_refused(schedule):
    assert schedule in SCHEDULE_TYPES
    with pytest.raises(ValueError, match="supported: Automatic, Uniform, Karras") as err:
        resolve("Euler", schedule)
    assert schedule in str(err.value)


def test_schedule_unsupported_by_that_class_is_refused():
    # diffusers' EulerAncestralDiscreteScheduler has no use_karras_sigmas.
    assert "Karras" not in schedule_types("Euler a")
    with pytest.raises(ValueError, match="not available for sampler 'Euler a'"):
        resolve("Euler a", "Karras")


def test_unknown_schedule_type_is_refused():
    with pytest.raises(ValueError, match="unknown schedule type 'Fancy'"):
        resolve("Euler", "Fancy")


def test_timestep_samplers_ignore_schedule_type_like_a1111():
    spec = resolve("DDIM", "Karras")
    assert spec.schedule_type == "Karras"  # still written, as A1111 writes p.scheduler
    assert "use_karras_sigmas" not in spec.overrides
    assert make_scheduler(SD15, "DDIM", "Karras").config.timestep_spacing == "leading"


def test_second_order_and_ensd_flags_follow_a1111():
    assert {n for n in A1111_NAMES if is_second_order(n)} == {
        "Heun",
        "DPM2",
        "DPM2 a",
        "DPM++ 2S a",
        "DPM++ SDE",
    }
    assert {n for n in A1111_NAMES if uses_ensd(n)} == {"Euler a", "DPM2 a", "DPM++ 2S a"}
    assert not uses_ensd("Euler a", eta=0)
    assert is_second_order("DPM++ SDE Karras")


def test_dpmpp_sde_is_repeatable_with_noise_sampler_seed():
    assert scheduler_kwargs("DPM++ SDE", [5]) == {"noise_sampler_seed": 5}
    assert scheduler_kwargs("DPM++ SDE", [5, 6]) == {"noise_sampler_seed": [5, 6]}
    assert scheduler_kwargs("Euler a", [5]) == {}
    a = make_scheduler(SD15, "DPM++ SDE", seeds=[5])
    assert isinstance(a, DPMSolverSDEScheduler) and a.config.noise_sampler_seed == 5
    assert torch.equal(
        _run(a, calls=4, seed=1), _run(make_scheduler(SD15, "DPM++ SDE", seeds=[5]), calls=4, seed=1)
    )
    assert not torch.equal(
        _run(make_scheduler(SD15, "DPM++ SDE", seeds=[5]), calls=4, seed=1),
        _run(make_scheduler(SD15, "DPM++ SDE", seeds=[6]), calls=4, seed=1),
    )


@pytest.mark.parametrize("name", ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ 2M SDE", "DPM++ 3M SDE"])
def test_stochastic_samplers_take_their_noise_from_the_image_rng(name):
    def run(seed):
        sched = make_scheduler(SD15, name)
        sched.set_timesteps(10)
        rng = ImageRNG((4, 8, 8), seeds=[seed], source="cpu")
        x = rng.first() * sched.init_noise_sigma
        with scheduler_noise(sched, rng):
            for t in sched.timesteps[:4]:
                x = sched.step(0.1 * sched.scale_model_input(x, t), t, x).prev_sample
        return x

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_make_scheduler_returns_independent_fresh_instances():
    a = make_scheduler(SD15, "DPM2 a", "Karras")
    a.set_timesteps(7)
    b = make_scheduler(SD15, "DPM2 a", "Karras")
    assert a is not b
    assert a.num_inference_steps == 7 and b.num_inference_steps != 7  # no state leaks via the cache
    c = make_scheduler({**SD15, "prediction_type": "v_prediction"}, "DPM2 a", "Karras")
    assert c.config.prediction_type == "v_prediction" and b.config.prediction_type == "epsilon"
    assert make_scheduler(SD15, "DPM++ SDE", seeds=[8]).config.noise_sampler_seed == 8
    assert make_scheduler(SD15, "DPM++ SDE", seeds=[9]).config.noise_sampler_seed == 9


def test_eta_infotext_follows_a1111_fields_and_defaults():
    assert eta_infotext("Euler a", None) == {}
    assert eta_infotext("Euler a", 1.0) == {}
    assert eta_infotext("Euler a", 0.5) == {"Eta": 0.5}
    assert eta_infotext("DDIM", 0.0) == {}
    assert eta_infotext("DDIM", 0.3) == {"Eta DDIM": 0.3}
