"""The k-diffusion samplers A1111 1.10 offers: short functions over a denoiser and a list of sigmas.

Each is ``sample_x(model, x, sigmas, *, callback, noise, ...)`` where ``model(x, sigma) -> denoised`` takes
one σ per row, ``sigmas`` is a CPU tensor (so the loop's σ arithmetic and branches never wait on the GPU)
and ``noise(sigma, sigma_next)`` is a :mod:`~core.engine.sampling.noise` sampler. Written from the papers
and k-diffusion 0.0.16's ``sampling.py`` (MIT), whose arithmetic they keep step for step so that the
latents match it; A1111's own additions (Restart, LCM) were read for behaviour only.

``callback(Step)`` runs once per step after the step's first model call. It may raise to cancel, and
may return the rows to keep (a job left the batch): the sampler then keeps only those rows of its
state and of its noise, and the caller's model sees the smaller batch from the next call on.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from scipy import integrate
from torch import Tensor

Model = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Step:
    """What a sampler reports after each step's first model call (k-diffusion's callback dict)."""

    i: int
    x: Tensor
    sigma: Tensor | float
    sigma_hat: Tensor | float
    denoised: Tensor


Callback = Callable[[Step], Sequence[int] | None]


class _Loop:
    """The per-step report, and the row selection a callback may ask for."""

    def __init__(self, callback: Callback | None, noise=None) -> None:
        self.callback = callback
        self.noise = noise

    def report(self, step: Step, *state: Tensor | list | None) -> tuple | None:
        """None, or ``state`` (tensors, lists of tensors, None) cut down to the rows the callback keeps."""
        rows = None if self.callback is None else self.callback(step)
        if rows is None:
            return None
        rows = list(rows)
        if self.noise is not None:
            self.noise = self.noise.select(rows)
        return tuple(_select(s, rows) for s in state)


def _select(value, rows: list[int]):
    if value is None:
        return None
    if isinstance(value, list):
        return [_select(v, rows) for v in value]
    return value[rows]


def to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """The Karras ODE derivative (x - D(x)) / σ (σ a scalar, as A1111's override of k-diffusion's to_d)."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor | float]:
    """σ_down to step to and σ_up of fresh noise for an ancestral step (η = 0: deterministic)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _churn(x, sigmas, i, loop, s_churn, s_tmin, s_tmax, s_noise):
    """Karras et al. (2022) Algorithm 2's churn: raise σ by γ, adding the matching noise."""
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    sigma_hat = sigmas[i] * (gamma + 1)
    if s_churn > 0:  # A1111 draws this noise every step once churn is on, used or not
        eps = loop.noise(sigmas[i], sigmas[i + 1]) * s_noise
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def sample_euler(model, x, sigmas, *, callback=None, noise=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """Karras et al. (2022) Algorithm 2 with Euler steps."""
    loop = _Loop(callback, noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, loop, s_churn, s_tmin, s_tmax, s_noise)
        denoised = model(x, sigma_hat * x.new_ones([x.shape[0]]))
        d = to_d(x, sigma_hat, denoised)
        if kept := loop.report(Step(i, x, sigmas[i], sigma_hat, denoised), x, d):
            x, d = kept
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


def sample_euler_ancestral(model, x, sigmas, *, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with Euler steps."""
    loop = _Loop(callback, noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), x, denoised):
            x, denoised = kept
        d = to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + loop.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_heun(model, x, sigmas, *, callback=None, noise=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=float("inf"), s_noise=1.0):
    """Karras et al. (2022) Algorithm 2: Heun steps (Euler for the last)."""
    loop = _Loop(callback, noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, loop, s_churn, s_tmin, s_tmax, s_noise)
        s_in = x.new_ones([x.shape[0]])
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        if kept := loop.report(Step(i, x, sigmas[i], sigma_hat, denoised), x, d):
            x, d = kept
            s_in = x.new_ones([x.shape[0]])
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigmas[i + 1], model(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
    return x


def sample_dpm_2(model, x, sigmas, *, callback=None, noise=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=float("inf"), s_noise=1.0):
    """DPM-Solver-2 steps (midpoint in log σ) inside Karras et al.'s Algorithm 2."""
    loop = _Loop(callback, noise)
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, loop, s_churn, s_tmin, s_tmax, s_noise)
        s_in = x.new_ones([x.shape[0]])
        denoised = model(x, sigma_hat * s_in)
        d = to_d(x, sigma_hat, denoised)
        if kept := loop.report(Step(i, x, sigmas[i], sigma_hat, denoised), x, d):
            x, d = kept
            s_in = x.new_ones([x.shape[0]])
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


def sample_dpm_2_ancestral(model, x, sigmas, *, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver-2 steps."""
    loop = _Loop(callback, noise)
    for i in range(len(sigmas) - 1):
        s_in = x.new_ones([x.shape[0]])
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), x, denoised):
            x, denoised = kept
            s_in = x.new_ones([x.shape[0]])
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, model(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + loop.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def linear_multistep_coeff(order: int, t, i: int, j: int) -> float:
    """Adams-Bashforth weight of derivative j at step i, integrating the Lagrange basis over [t_i, t_i+1]."""
    if order - 1 > i:
        raise ValueError(f"Order {order} too high for step {i}")

    def fn(tau):
        prod = 1.0
        for k in range(order):
            if j == k:
                continue
            prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


def sample_lms(model, x, sigmas, *, callback=None, noise=None, order=4):
    """Linear multistep (Adams-Bashforth in σ) of up to ``order``, k-diffusion's LMS."""
    loop = _Loop(callback, noise)
    sigmas_cpu = sigmas.detach().cpu().numpy()
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), x, ds):
            x, ds = kept
        cur_order = min(i + 1, order)
        coeffs = [linear_multistep_coeff(cur_order, sigmas_cpu, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=False))
    return x


def _sigma_fn(t):
    return t.neg().exp()


def _t_fn(sigma):
    return sigma.log().neg()


def sample_dpmpp_2s_ancestral(model, x, sigmas, *, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022)."""
    loop = _Loop(callback, noise)
    for i in range(len(sigmas) - 1):
        s_in = x.new_ones([x.shape[0]])
        denoised = model(x, sigmas[i] * s_in)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), x, denoised):
            x, denoised = kept
            s_in = x.new_ones([x.shape[0]])
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_fn(sigmas[i]), _t_fn(sigma_down)
            r = 1 / 2
            h = t_next - t
            s = t + r * h
            x_2 = (_sigma_fn(s) / _sigma_fn(t)) * x - (-h * r).expm1() * denoised
            denoised_2 = model(x_2, _sigma_fn(s) * s_in)
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + loop.noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def sample_dpmpp_sde(model, x, sigmas, *, callback=None, noise=None, eta=1.0, s_noise=1.0, r=1 / 2):
    """DPM-Solver++ (stochastic), two model calls per step, noise from a Brownian tree."""
    loop = _Loop(callback, noise)
    for i in range(len(sigmas) - 1):
        s_in = x.new_ones([x.shape[0]])
        denoised = model(x, sigmas[i] * s_in)
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), x, denoised):
            x, denoised = kept
            s_in = x.new_ones([x.shape[0]])
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(s), eta)
        s_ = _t_fn(sd)
        x_2 = (_sigma_fn(s_) / _sigma_fn(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + loop.noise(_sigma_fn(t), _sigma_fn(s)) * s_noise * su
        denoised_2 = model(x_2, _sigma_fn(s) * s_in)
        sd, su = get_ancestral_step(_sigma_fn(t), _sigma_fn(t_next), eta)
        t_next_ = _t_fn(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_fn(t_next_) / _sigma_fn(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + loop.noise(_sigma_fn(t), _sigma_fn(t_next)) * s_noise * su
    return x


def sample_dpmpp_2m(model, x, sigmas, *, callback=None, noise=None):
    """DPM-Solver++(2M): second-order multistep in log σ."""
    loop = _Loop(callback, noise)
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), x, denoised, old_denoised):
            x, denoised, old_denoised = kept
        t, t_next = _t_fn(sigmas[i]), _t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t_fn(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_fn(t_next) / _sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(model, x, sigmas, *, callback=None, noise=None, eta=1.0, s_noise=1.0,
                        solver_type="midpoint"):
    """DPM-Solver++(2M) SDE, midpoint or Heun correction, noise from a Brownian tree."""
    if solver_type not in {"heun", "midpoint"}:
        raise ValueError(f"solver_type must be 'heun' or 'midpoint', got {solver_type!r}")
    loop = _Loop(callback, noise)
    old_denoised, h_last, h = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), x, denoised, old_denoised):
            x, denoised, old_denoised = kept
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + loop.noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_3m_sde(model, x, sigmas, *, callback=None, noise=None, eta=1.0, s_noise=1.0):
    """DPM-Solver++(3M) SDE, noise from a Brownian tree."""
    loop = _Loop(callback, noise)
    denoised_1, denoised_2 = None, None
    h, h_1, h_2 = None, None, None
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), x, denoised, denoised_1, denoised_2):
            x, denoised, denoised_1, denoised_2 = kept
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * ((denoised - denoised_1) / (h_1 / h))
            if eta:
                x = x + loop.noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


def sample_lcm(model, x, sigmas, *, callback=None, noise=None):
    """Latent consistency sampling: jump to the model's x₀, re-noise to the next σ (A1111's LCM)."""
    loop = _Loop(callback, noise)
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * x.new_ones([x.shape[0]]))
        if kept := loop.report(Step(i, x, sigmas[i], sigmas[i], denoised), denoised):
            (denoised,) = kept
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * loop.noise(sigmas[i], sigmas[i + 1])
    return x


def _karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    from core.engine.sampling.schedules import karras

    return karras(n, sigma_min, sigma_max, rho=rho)


def _restart_steps(sigmas: Tensor) -> list[tuple[Tensor, Tensor]]:
    """Restart's (σ, σ_next) pairs: A1111's default restart list (Xu et al. 2023) woven into the schedule.

    From 20 steps on, the schedule is rebuilt as Karras over (σ[-2], σ[0]) with the restart steps taken out,
    and a Karras segment from σ ≈ 2 down to σ ≈ 0.1 is repeated once (twice from 36 steps).
    """
    steps = sigmas.shape[0] - 1
    restarts: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = _karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restarts = {0.1: (restart_steps + 1, restart_times, 2.0)}
    by_index = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restarts.items()}
    pairs = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in by_index:
            restart_steps, restart_times, restart_max = by_index[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                segment = _karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                pairs.extend(list(itertools.pairwise(segment)) * restart_times)
    return pairs


def sample_restart(model, x, sigmas, *, callback=None, noise=None, s_noise=1.0):
    """Restart sampling (Xu et al. 2023): Heun steps, jumping back up to a higher σ with fresh noise."""
    loop = _Loop(callback, noise)
    last_sigma = None
    for step, (old_sigma, new_sigma) in enumerate(_restart_steps(sigmas)):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + loop.noise(last_sigma, old_sigma) * s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        s_in = x.new_ones([x.shape[0]])
        denoised = model(x, old_sigma * s_in)
        d = to_d(x, old_sigma, denoised)
        if kept := loop.report(Step(step, x, new_sigma, old_sigma, denoised), x, d):
            x, d = kept
            s_in = x.new_ones([x.shape[0]])
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, new_sigma, model(x_2, new_sigma * s_in))
            x = x + (d + d_2) / 2 * dt
        last_sigma = new_sigma
    return x


def restart_step_count(sigmas: Tensor) -> int:
    """How many steps (callbacks) Restart takes over ``sigmas``: more than len(sigmas) - 1 from 20 steps on."""
    return len(_restart_steps(sigmas))

