"""A1111's "timesteps" samplers: DDIM, DDIM CFG++, PLMS and UniPC, over integer DDPM timesteps.

``model(x, t) -> ε`` takes one timestep per row (a v model's output converted to ε, see
:func:`~core.engine.sampling.model.timestep_eps`). For DDIM CFG++ it returns ``(ε_guided, ε_uncond)``,
with the guidance scale already divided by 12.5 (:data:`CFGPP_SCALE`). A1111 runs ``len(timesteps) - 1``
DDIM/PLMS steps from the last timestep down and stops at ᾱ[timesteps[0]] = ᾱ[1].

Written from the papers (Song et al. 2021 DDIM; Liu et al. 2022 PNDM; Zhao et al. 2023 UniPC; Chung et al.
2024 CFG++), with A1111 read for its behaviour: its timestep grid, where each step reads ᾱ, its float32 /
float64 mix, UniPC's defaults (B(h) variant bh1, order 3, lower order at the end, uniform in t, model
time (t - 1/1000)·1000).
"""

from __future__ import annotations

import torch
from torch import Tensor

from core.engine.sampling.samplers import Step, _Loop

CFGPP_SCALE = 1 / 12.5  # DDIM CFG++ maps CFG 0..12.5 onto CFG++'s λ 0..1


def timesteps(steps: int) -> Tensor:
    """A1111's grid: ``range(0, 1000, 1000 // steps) + 1`` clipped to 999 (int64, CPU)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return torch.clip(torch.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def _tables(alphas_cumprod: Tensor, ts: Tensor):
    alphas = alphas_cumprod[ts]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(ts[:-1], pad=(1, 0))].to(torch.float64)
    return alphas, alphas_prev, torch.sqrt(1 - alphas)


def _ddim_sigmas(alphas: Tensor, alphas_prev: Tensor, eta: float) -> Tensor:
    # A1111 mixes float32 ᾱ tensors with float64 numpy arrays here: 1 - ᾱ_t is taken in float32.
    one_minus = (1 - alphas).to(torch.float64)
    return eta * torch.sqrt((1 - alphas_prev) / one_minus * (1 - alphas.to(torch.float64) / alphas_prev))


def _ddim(model, x, ts, alphas_cumprod, *, callback, noise, eta, cfgpp):
    alphas, alphas_prev, sqrt_one_minus = _tables(alphas_cumprod.cpu(), ts.cpu())
    sigmas = _ddim_sigmas(alphas, alphas_prev, eta)
    loop = _Loop(callback, noise)
    for i in range(len(ts) - 1):
        index = len(ts) - 1 - i
        t_in = x.new_ones([x.shape[0]]) * float(ts[index])
        if cfgpp:
            e_t, e_dir = model(x, t_in)
        else:
            e_t = e_dir = model(x, t_in)
        s_x = x.new_ones((x.shape[0], 1, 1, 1))
        a_t, a_prev = float(alphas[index]) * s_x, float(alphas_prev[index]) * s_x
        sigma_t, sqrt_one_minus_at = float(sigmas[index]) * s_x, float(sqrt_one_minus[index]) * s_x
        pred_x0 = (x - sqrt_one_minus_at * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1.0 - a_prev - sigma_t**2).sqrt() * e_dir
        if eta:  # A1111 draws (and zeroes) this noise at η = 0 too; nothing else draws, so skipping is exact
            x = x + sigma_t * loop.noise()
        if kept := loop.report(Step(i, x, 0, 0, pred_x0), x):
            (x,) = kept
    return x


def sample_ddim(model, x, ts, alphas_cumprod, *, callback=None, noise=None, eta=0.0):
    """DDIM: x₀ estimate, then the deterministic direction (plus η-scaled fresh noise)."""
    return _ddim(model, x, ts, alphas_cumprod, callback=callback, noise=noise, eta=eta, cfgpp=False)


def sample_ddim_cfgpp(model, x, ts, alphas_cumprod, *, callback=None, noise=None, eta=0.0):
    """DDIM CFG++: as DDIM, but the step direction uses the unconditional ε (``model`` returns both)."""
    return _ddim(model, x, ts, alphas_cumprod, callback=callback, noise=noise, eta=eta, cfgpp=True)


def sample_plms(model, x, ts, alphas_cumprod, *, callback=None, noise=None):
    """PLMS (pseudo linear multistep): a pseudo improved-Euler start, then Adams-Bashforth orders 2-4 in ε."""
    alphas, alphas_prev, sqrt_one_minus = _tables(alphas_cumprod.cpu(), ts.cpu())
    loop = _Loop(callback, noise)
    old_eps: list[Tensor] = []

    def x_prev_and_x0(x, e_t, index):
        s_x = x.new_ones((x.shape[0], 1, 1, 1))
        a_t, a_prev = float(alphas[index]) * s_x, float(alphas_prev[index]) * s_x
        pred_x0 = (x - float(sqrt_one_minus[index]) * s_x * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t, pred_x0

    for i in range(len(ts) - 1):
        index = len(ts) - 1 - i
        s_in = x.new_ones([x.shape[0]])
        e_t = model(x, float(ts[index]) * s_in)
        if not old_eps:
            x_prev, _ = x_prev_and_x0(x, e_t, index)
            e_t_prime = (e_t + model(x_prev, float(ts[max(index - 1, 0)]) * s_in)) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = x_prev_and_x0(x, e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        if kept := loop.report(Step(i, x, 0, 0, pred_x0), x, old_eps):
            x, old_eps = kept
    return x


# -- UniPC ------------------------------------------------------------------------------------------------


class _VP:
    """The discrete VP schedule in continuous time t ∈ (0, 1]: log α(t) piecewise linear over the 1000 steps."""

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.total_n = len(alphas_cumprod)
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1)[1:]
        self.log_alpha_array = 0.5 * torch.log(alphas_cumprod.cpu().to(torch.float32))

    @staticmethod
    def _interp(x: Tensor, xp: Tensor, yp: Tensor) -> Tensor:
        """Piecewise-linear y(x) through (xp, yp), xp ascending, extended linearly past both ends."""
        k = (torch.searchsorted(xp, x.contiguous()) - 1).clamp(0, len(xp) - 2)
        x0, x1, y0, y1 = xp[k], xp[k + 1], yp[k], yp[k + 1]
        return y0 + (x - x0) * (y1 - y0) / (x1 - x0)

    def log_mean_coeff(self, t: Tensor) -> Tensor:
        return self._interp(t, self.t_array.to(t.device), self.log_alpha_array.to(t.device))

    def alpha(self, t):
        return torch.exp(self.log_mean_coeff(t))

    def std(self, t):
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_mean_coeff(t)))

    def lambda_(self, t):
        log_mean = self.log_mean_coeff(t)
        return log_mean - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_mean))

    def inverse_lambda(self, lamb: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros((1,)).to(lamb), -2.0 * lamb)
        return self._interp(
            log_alpha, self.log_alpha_array.flip(0).to(lamb.device), self.t_array.flip(0).to(lamb.device)
        )


def _unipc_times(vp: _VP, skip_type: str, t_start: float, t_end: float, n: int) -> Tensor:
    if skip_type == "time_uniform":
        return torch.linspace(t_start, t_end, n + 1)
    if skip_type == "time_quadratic":
        return torch.linspace(t_start**0.5, t_end**0.5, n + 1).pow(2)
    if skip_type == "logSNR":
        lam_t, lam_0 = vp.lambda_(torch.tensor([t_start])), vp.lambda_(torch.tensor([t_end]))
        return vp.inverse_lambda(torch.linspace(lam_t.item(), lam_0.item(), n + 1))
    raise ValueError(f"unknown UniPC skip type {skip_type!r}; use time_uniform, time_quadratic or logSNR")


def sample_unipc(
    model,
    x,
    ts,
    alphas_cumprod,
    *,
    callback=None,
    noise=None,
    img2img=False,
    order=3,
    variant="bh1",
    skip_type="time_uniform",
    lower_order_final=True,
):
    """UniPC multistep (predictor UniP + corrector UniC, data prediction) over ``len(ts)`` steps.

    The model is called at model time (t - 1/1000)·1000 for t from 1 (img2img: ts[-1]/1000 + 1/1000)
    down to 1/1000. The corrector reuses the model call the next step needs, so there is one call a step.
    Every coefficient is computed on the CPU (the times are the same for all rows), so nothing in the loop
    reads a value back from the GPU.
    """
    steps = len(ts)
    if steps < order:
        raise ValueError(f"UniPC needs at least as many steps as its order ({order}), got {steps}")
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown UniPC variant {variant!r}; use bh1 or bh2")
    vp = _VP(alphas_cumprod)
    t_start = float(ts[-1]) / 1000 + 1 / 1000 if img2img else 1.0
    grid = _unipc_times(vp, skip_type, t_start, 1.0 / vp.total_n, steps)  # CPU
    loop = _Loop(callback, noise)

    def model_x0(x, t):
        eps = model(x, x.new_full((x.shape[0],), (float(t) - 1.0 / vp.total_n) * 1000.0))
        return (x - float(vp.std(t)) * eps) / float(vp.alpha(t))

    prev_x0, prev_t = [model_x0(x, grid[:1])], [grid[:1]]
    for step in range(1, steps + 1):
        t = grid[step : step + 1]
        if step < order:
            step_order, corrector = step, True
        else:
            step_order = min(order, steps + 1 - step) if lower_order_final else order
            corrector = step != steps
        x, x0_t = _unipc_update(vp, model_x0, x, prev_x0, prev_t, t, step_order, variant, corrector)
        if kept := loop.report(Step(step - 1, x, 0, 0, x0_t if x0_t is not None else x), x, x0_t, prev_x0):
            x, x0_t, prev_x0 = kept
        if step < order:
            prev_x0.append(x0_t)
            prev_t.append(t)
            continue
        prev_x0, prev_t = [*prev_x0[1:], x0_t], [*prev_t[1:], t]
    return x


def _unipc_update(vp, model_x0, x, prev_x0, prev_t, t, order, variant, use_corrector):
    """One UniPC-bh step in data prediction from prev_t[-1] to t (one-element CPU tensors); returns
    (x_t, x₀ at t or None)."""
    lambda_prev_0, lambda_t = vp.lambda_(prev_t[-1]), vp.lambda_(t)
    x0_prev_0 = prev_x0[-1]
    sigma_prev_0, sigma_t = vp.std(prev_t[-1]), vp.std(t)
    alpha_t = torch.exp(vp.log_mean_coeff(t))
    h = lambda_t - lambda_prev_0

    rks, d1s = [], []
    for i in range(1, order):
        rk = ((vp.lambda_(prev_t[-(i + 1)]) - lambda_prev_0) / h)[0]
        rks.append(rk)
        d1s.append((prev_x0[-(i + 1)] - x0_prev_0) / float(rk))
    rks.append(torch.tensor(1.0))
    rks = torch.stack(rks)

    hh = -h[0]
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    rows, b, factorial_i = [], [], 1
    for i in range(1, order + 1):
        rows.append(torch.pow(rks, i - 1))
        b.append(h_phi_k * factorial_i / b_h)
        factorial_i *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial_i
    r_mat, b = torch.stack(rows), torch.stack(b)

    x_t_ = float(sigma_t / sigma_prev_0) * x - float(alpha_t * h_phi_1) * x0_prev_0
    scale = float(alpha_t * b_h)
    if d1s:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b[:-1])
        x_t = x_t_ - scale * _weighted(rhos_p, d1s)
    else:
        x_t = x_t_
    if not use_corrector:
        return x_t, None
    rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_mat, b)
    x0_t = model_x0(x_t, t)
    corr = _weighted(rhos_c[:-1], d1s) if d1s else 0
    return x_t_ - scale * (corr + float(rhos_c[-1]) * (x0_t - x0_prev_0)), x0_t


def _weighted(weights: Tensor, terms: list[Tensor]) -> Tensor:
    """Σ wₖ·termₖ with CPU weights (python floats on the device's tensors: no transfer, no sync)."""
    out = float(weights[0]) * terms[0]
    for weight, term in zip(weights[1:].tolist(), terms[1:], strict=True):
        out = out + weight * term
    return out
