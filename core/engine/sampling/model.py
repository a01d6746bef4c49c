"""The model as k-diffusion sees it: a noise schedule over 1000 discrete timesteps, and a denoiser.

Written from the LDM paper's DDPM schedule and k-diffusion's ``external.py`` (MIT):

- :func:`ldm_alphas_cumprod` is ᾱ as the LDM code computes it (β = float64 ``linspace(√0.00085, √0.012,
  1000)²``, cumulative product, stored as float32), which is what A1111 samples with;
  :func:`rescale_zero_terminal_snr` is A1111 1.10's "Zero Terminal SNR" noise-schedule option.
- :class:`NoiseSchedule` is k-diffusion's ``DiscreteSchedule``: σ = √((1-ᾱ)/ᾱ), σ → t by interpolating
  log σ (a continuous t, never rounded), t → σ, and the "Uniform" sigmas ``get_sigmas(n)``.
  :class:`LCMSchedule` is the 50-step table A1111's LCM sampler uses instead.
- :func:`scalings` and :meth:`NoiseSchedule.denoise` turn a raw UNet call (eps or v at ``(c_in·x, t)``)
  into k-diffusion's "denoised" x₀ (``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``).

Tables live on the CPU; :meth:`NoiseSchedule.to` gives a copy on the UNet's device for the denoiser, so
σ → t runs on the device without a host round trip.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

TIMESTEPS = 1000
LDM_BETA_START = 0.00085
LDM_BETA_END = 0.012
# A1111's rescale_zero_terminal_snr_abar sets the last ᾱ to this instead of 0 (diffusers uses 2**-24), so
# that σ_max stays finite (≈ 4518.9).
ZTSNR_FINAL_ALPHA_BAR = 4.8973451890853435e-08
PREDICTIONS = ("eps", "v")

UNet = Callable[[Tensor, Tensor], Tensor]  # (c_in·x, t) -> eps or v, the caller's conditioning bound in


def ldm_alphas_cumprod() -> Tensor:
    """ᾱ of SD 1.x/2.x/XL as the LDM code builds it: float64 maths, stored float32 (A1111's ``alphas_cumprod``)."""
    betas = torch.linspace(LDM_BETA_START**0.5, LDM_BETA_END**0.5, TIMESTEPS, dtype=torch.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas.numpy(), axis=0)
    return torch.tensor(alphas_cumprod, dtype=torch.float32)


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """A1111 1.10's "Zero Terminal SNR" ᾱ (Lin et al. 2023, Algorithm 1, in √ᾱ), last value pinned.

    Computed in the dtype of ``alphas_cumprod`` (float32, as A1111 does it on the model's table).
    """
    root = alphas_cumprod.sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    out = root**2
    out[-1] = ZTSNR_FINAL_ALPHA_BAR
    return out


def scalings(sigma: Tensor, prediction: str) -> tuple[Tensor | float, Tensor, Tensor]:
    """k-diffusion's (c_skip, c_out, c_in) for an eps or v model at σ (σ_data = 1)."""
    c_in = 1 / (sigma**2 + 1.0) ** 0.5
    if prediction == "eps":
        return 1.0, -sigma, c_in
    if prediction == "v":
        return 1.0 / (sigma**2 + 1.0), -sigma / (sigma**2 + 1.0) ** 0.5, c_in
    raise ValueError(f"unknown model prediction {prediction!r}; use one of: {', '.join(PREDICTIONS)}")


def _append_dims(x: Tensor | float, ndim: int) -> Tensor | float:
    if not isinstance(x, Tensor):
        return x
    return x[(...,) + (None,) * (ndim - x.ndim)]


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A model's discrete noise schedule (k-diffusion's ``DiscreteSchedule``), with its prediction type.

    ``sigmas`` ascend (index = timestep). Build with :meth:`ldm`; :meth:`to` moves the tables.
    """

    alphas_cumprod: Tensor
    prediction: str = "eps"
    zero_terminal_snr: bool = False  # ᾱ rescaled (A1111's "Noise Schedule: Zero Terminal SNR")
    sigmas: Tensor = field(init=False)
    log_sigmas: Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(
                f"unknown model prediction {self.prediction!r}; use one of: {', '.join(PREDICTIONS)}"
            )
        sigmas = ((1 - self.alphas_cumprod) / self.alphas_cumprod) ** 0.5
        object.__setattr__(self, "sigmas", sigmas)
        object.__setattr__(self, "log_sigmas", sigmas.log())

    @classmethod
    def ldm(cls, prediction: str = "eps", *, zero_terminal_snr: bool = False) -> NoiseSchedule:
        """The SD schedule; ``zero_terminal_snr`` is A1111's "Noise schedule: Zero Terminal SNR"."""
        alphas_cumprod = ldm_alphas_cumprod()
        if zero_terminal_snr:
            alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
        return cls(alphas_cumprod, prediction, zero_terminal_snr)

    def to(self, device: str | torch.device) -> NoiseSchedule:
        """The same schedule with its tables on ``device``."""
        if self.alphas_cumprod.device == torch.device(device):
            return self
        return type(self)(self.alphas_cumprod.to(device), self.prediction, self.zero_terminal_snr)

    @property
    def sigma_min(self) -> float:
        """A1111's ``model_wrap.sigmas[0].item()``: the default low end of every schedule type."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous timestep of σ: log σ interpolated linearly between the two neighbouring table entries."""
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        t = t.float()
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def get_sigmas(self, n: int) -> Tensor:
        """n sigmas at timesteps evenly spaced from the last to 0, then 0 (A1111's "Uniform")."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return _append_zero(self.t_to_sigma(t))

    def model_timestep(self, sigma: Tensor) -> Tensor:
        """The timestep the UNet is called with at σ."""
        return self.sigma_to_t(sigma)

    def denoise(self, unet: UNet, x: Tensor, sigma: Tensor) -> Tensor:
        """k-diffusion's denoiser: x₀ from one UNet call at (c_in·x, t(σ)); ``sigma`` has one value per row."""
        c_skip, c_out, c_in = (_append_dims(c, x.ndim) for c in scalings(sigma, self.prediction))
        out = unet(x * c_in, self.model_timestep(sigma))
        if self.prediction == "eps":
            return x + out * c_out
        return out * c_out + x * c_skip


class LCMSchedule(NoiseSchedule):
    """The table A1111's LCM sampler denoises over: every 20th ᾱ of the model (50 "original" steps).

    Timesteps are quantised to those 50 (t = 20·index + 19); the output is mixed with the input by LCM's
    boundary-condition scalings (σ_data = 0.5, timestep scaled by 10). As in A1111, the model is treated
    as an eps model whatever its prediction type.
    """

    skip = TIMESTEPS // 50

    @classmethod
    def from_model(cls, model: NoiseSchedule) -> LCMSchedule:
        steps = TIMESTEPS // cls.skip
        valid = torch.stack(
            [model.alphas_cumprod[TIMESTEPS - 1 - i * cls.skip] for i in reversed(range(steps))]
        )
        return cls(valid.to(torch.float32), "eps")

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        dists = sigma.log() - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip + (self.skip - 1)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        index = torch.clamp(((t - (self.skip - 1)) / self.skip).float(), min=0, max=len(self.sigmas) - 1)
        return super().t_to_sigma(index)

    def get_sigmas(self, n: int) -> Tensor:
        start = self.sigma_to_t(self.sigmas[-1])
        end = self.sigma_to_t(self.sigmas[0])
        return _append_zero(self.t_to_sigma(torch.linspace(start, end, n, device=self.sigmas.device)))

    def denoise(self, unet: UNet, x: Tensor, sigma: Tensor) -> Tensor:
        _, c_out, c_in = (_append_dims(c, x.ndim) for c in scalings(sigma, "eps"))
        t = self.sigma_to_t(sigma)
        x0 = x + unet(x * c_in, t) * c_out
        scaled_t = _append_dims(t, x.ndim) * 10.0
        c_skip = 0.5**2 / (scaled_t**2 + 0.5**2)
        c_out_lcm = scaled_t / (scaled_t**2 + 0.5**2) ** 0.5
        return c_out_lcm * x0 + c_skip * x


def _append_zero(x: Tensor) -> Tensor:
    return torch.cat([x, x.new_zeros([1])])


def eps_from_v(alphas_cumprod: Tensor, x: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """ε of a v model at integer timestep ``t`` (truncated, as A1111's ``CompVisTimestepsVDenoiser``)."""
    a = alphas_cumprod.to(x.device)[t.to(torch.int)][:, None, None, None]
    return a.sqrt() * v + (1 - a).sqrt() * x


def timestep_eps(alphas_cumprod: Tensor, prediction: str, unet: UNet, x: Tensor, t: Tensor) -> Tensor:
    """A1111's timesteps denoiser: the UNet at (x, t) as ε (a v model's output converted)."""
    out = unet(x, t)
    if prediction == "eps":
        return out
    if prediction == "v":
        return eps_from_v(alphas_cumprod, x, t, out)
    raise ValueError(f"unknown model prediction {prediction!r}; use one of: {', '.join(PREDICTIONS)}")


# -- classifier-free guidance ---------------------------------------------------------------------------


def combine_cfg(uncond: Tensor, conds: Sequence[Tensor], weights: Sequence[float], scale: float) -> Tensor:
    """A1111's CFG with ``AND`` parts (``combine_denoised``): ``uncond + Σₖ (condₖ - uncond) · (wₖ · scale)``.

    ``uncond`` and each of ``conds`` hold one row per image. Works on x₀ (k-diffusion samplers) or ε
    (timesteps samplers): the combination is linear. The arithmetic is A1111's, term for term.
    """
    out = uncond
    for cond, weight in zip(conds, weights, strict=True):
        out = out + (cond - uncond) * (weight * scale)
    return out


def rescale_cfg(x: Tensor, sigma: Tensor, cond: Tensor, guided: Tensor, phi: float) -> Tensor:
    """CFG rescale φ (Lin et al. 2023, §3.4) as ComfyUI's and Forge's RescaleCFG do it, on x₀ outputs.

    ``cond`` is the conditional x₀, ``guided`` the CFG-combined x₀, ``sigma`` one value per row. Both are
    turned into v predictions, the guided v is rescaled to the conditional v's per-image standard deviation
    and mixed with weight φ, and the result is turned back into x₀. φ = 0 returns ``guided``.
    """
    if phi == 0:
        return guided
    s = _append_dims(sigma, x.ndim)
    root = (s * s + 1.0) ** 0.5
    x_scaled = x / (s * s + 1.0)
    v_cond = (x_scaled - cond) * root / s
    v_cfg = (x_scaled - guided) * root / s
    ratio = v_cond.std(dim=tuple(range(1, x.ndim)), keepdim=True) / v_cfg.std(
        dim=tuple(range(1, x.ndim)), keepdim=True
    )
    v_final = phi * (v_cfg * ratio) + (1.0 - phi) * v_cfg
    return x_scaled - v_final * s / root


def rescale_cfg_eps(
    alphas_cumprod: Tensor, x: Tensor, t: Tensor, cond: Tensor, guided: Tensor, phi: float
) -> Tensor:
    """:func:`rescale_cfg` for the timesteps samplers, whose model gives ε at integer timestep ``t``: the same
    rescale, done on the x₀ those ε mean (x in σ space is x/√ᾱ, x₀ = x/√ᾱ - σ·ε), and turned back into ε."""
    if phi == 0:
        return guided
    a = _append_dims(alphas_cumprod.to(x.device)[t.to(torch.int)], x.ndim)
    sigma = ((1 - a) / a) ** 0.5
    x_sigma = x / a.sqrt()
    rescaled = rescale_cfg(x_sigma, sigma.flatten(), x_sigma - sigma * cond, x_sigma - sigma * guided, phi)
    return (x_sigma - rescaled) / sigma
