"""DPM-Solver (Lu et al. 2022, arXiv:2206.00927) as k-diffusion runs it: "DPM fast" and "DPM adaptive".

They work in t = -log σ between σ_max and σ_min instead of over a list of sigmas, so A1111's schedule
type does not change them (it passes the model's σ range, or the img2img tail's ends). Written from the
paper and k-diffusion 0.0.16's ``DPMSolver`` (MIT), keeping its arithmetic; the t grid stays on the CPU.

DPM adaptive picks its step sizes from an error norm over the whole batch, so (in A1111 too) an image
sampled in a batch differs from the same image sampled alone, and each step reads that norm on the host.
It cannot drop rows mid-run: run it one job at a time.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from core.engine.sampling.samplers import Step, _Loop, get_ancestral_step


class _PID:
    """PID step-size controller (Söderlind): accepts a step when the proposed factor ≥ ``accept_safety``."""

    def __init__(self, h, pcoeff, icoeff, dcoeff, order=1, accept_safety=0.81, eps=1e-8):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


class _Solver:
    def __init__(self, model, loop: _Loop):
        self.model = model
        self.loop = loop

    @staticmethod
    def t(sigma):
        return -sigma.log()

    @staticmethod
    def sigma(t):
        return t.neg().exp()

    def eps(self, cache, key, x, t):
        if key in cache:
            return cache[key], cache
        sigma = self.sigma(t) * x.new_ones([x.shape[0]])
        eps = (x - self.model(x, sigma)) / self.sigma(t)
        return eps, {key: eps, **cache}

    def step_1(self, x, t, t_next, cache):
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        return x - self.sigma(t_next) * h.expm1() * eps, cache

    def step_2(self, x, t, t_next, cache, r1=1 / 2):
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, cache = self.eps(cache, "eps_r1", u1, s1)
        x_2 = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        return x_2, cache

    def step_3(self, x, t, t_next, cache, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        eps, cache = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - self.sigma(s1) * (r1 * h).expm1() * eps
        eps_r1, cache = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - self.sigma(s2) * (r2 * h).expm1() * eps
            - self.sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        )
        eps_r2, cache = self.eps(cache, "eps_r2", u2, s2)
        x_3 = x - self.sigma(t_next) * h.expm1() * eps - self.sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)
        return x_3, cache


def sample_dpm_fast(model, x: Tensor, sigma_min: float, sigma_max: float, n: int, *, callback=None, noise=None,
                    eta: float = 0.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-Fast: ``n`` model calls on a uniform t grid, orders 3, 3, ..., then 2/1 for the rest."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    loop = _Loop(callback, noise)
    solver = _Solver(model, loop)
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    m = math.floor(n / 3) + 1
    ts = torch.linspace(t_start, t_end, m + 1)
    orders = [3] * (m - 2) + [2, 1] if n % 3 == 0 else [3] * (m - 1) + [n % 3]
    for i, order in enumerate(orders):
        cache: dict = {}
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, su = get_ancestral_step(solver.sigma(t), solver.sigma(t_next), eta)
            t_next_ = torch.minimum(t_end, solver.t(sd))
            su = (solver.sigma(t_next) ** 2 - solver.sigma(t_next_) ** 2) ** 0.5
        else:
            t_next_, su = t_next, 0.0
        eps, cache = solver.eps(cache, "eps", x, t)
        denoised = x - solver.sigma(t) * eps
        if kept := loop.report(Step(i, x, solver.sigma(t), solver.sigma(t), denoised), x, eps):
            x, eps = kept
            cache = {"eps": eps}
        step = (solver.step_1, solver.step_2, solver.step_3)[order - 1]
        x, cache = step(x, t, t_next_, cache)
        if eta:  # A1111 draws (and wastes) this noise at η = 0 too; nothing else draws, so skipping is exact
            x = x + su * s_noise * loop.noise(solver.sigma(t), solver.sigma(t_next))
    return x


def sample_dpm_adaptive(model, x: Tensor, sigma_min: float, sigma_max: float, *, callback=None, noise=None,
                        order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                        pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0, accept_safety: float = 0.81,
                        eta: float = 0.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver-12/23 with adaptive step size (embedded lower-order error estimate, PID control)."""
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError("sigma_min and sigma_max must not be 0")
    if order not in {2, 3}:
        raise ValueError("order should be 2 or 3")

    def no_rows(step: Step):
        if callback is not None and callback(step) is not None:
            raise ValueError("DPM adaptive cannot drop rows mid-run (its step size depends on the whole batch)")

    loop = _Loop(no_rows, noise)
    solver = _Solver(model, loop)
    t_start, t_end = solver.t(torch.tensor(sigma_max)), solver.t(torch.tensor(sigma_min))
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s, x_prev = t_start, x
    pid = _PID(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    steps = 0
    while s < t_end - 1e-5:
        cache: dict = {}
        t = torch.minimum(t_end, s + pid.h)
        if eta:
            sd, su = get_ancestral_step(solver.sigma(s), solver.sigma(t), eta)
            t_ = torch.minimum(t_end, solver.t(sd))
            su = (solver.sigma(t) ** 2 - solver.sigma(t_) ** 2) ** 0.5
        else:
            t_, su = t, 0.0
        eps, cache = solver.eps(cache, "eps", x, s)
        denoised = x - solver.sigma(s) * eps
        if order == 2:
            x_low, cache = solver.step_1(x, s, t_, cache)
            x_high, cache = solver.step_2(x, s, t_, cache)
        else:
            x_low, cache = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high, cache = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high
            if eta:
                x = x + su * s_noise * loop.noise(solver.sigma(s), solver.sigma(t))
            s = t
        steps += 1
        loop.report(Step(steps - 1, x, solver.sigma(s), solver.sigma(s), denoised))
    return x
