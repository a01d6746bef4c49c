"""Every value range of a generation request, defined once (torch-free, imports nothing of chant).

The bot's option types, the services' request checks and the engine's ``check_inputs`` all import these,
so a value one of them accepts is never refused by another after it was queued and charged.
"""

from __future__ import annotations

# Seeds: A1111 accepts any 32-bit unsigned seed; -1 means "random".
MAX_SEED = 2**32 - 1
RANDOM_SEED = -1
# A random seed is drawn as A1111 draws it: ``random.randrange(RANDOM_SEED_BOUND)``.
RANDOM_SEED_BOUND = 4294967294

# Image size: a multiple of 8 (the VAE's factor) between these, a side.
MIN_SIDE = 64
MAX_SIDE = 4096
SIDE_MULTIPLE = 8

MIN_STEPS = 1
MAX_STEPS = 150
MAX_HIRES_STEPS = 150  # 0 = the first pass's step count

MIN_COUNT = 1
MAX_COUNT = 16  # the engine's bound; the bot offers fewer (BOT_MAX_COUNT)
BOT_MAX_COUNT = 4

MIN_CFG = -100.0
MAX_CFG = 100.0
BOT_MIN_CFG = 1.0  # what Discord's option offers
MIN_CFG_RESCALE = 0.0  # CFG rescale φ (Forge/ComfyUI's RescaleCFG; 0 = off)
MAX_CFG_RESCALE = 1.0
MIN_ETA = 0.0  # A1111's eta (ancestral / DDIM) slider
MAX_ETA = 1.0
BOT_MAX_CFG = 30.0

MIN_CLIP_SKIP = 1
MAX_CLIP_SKIP = 12

MIN_STRENGTH = 0.0  # img2img denoising strength (and variation strength)
MAX_STRENGTH = 1.0

MIN_MASK_BLUR = 0
MAX_MASK_BLUR = 64
MIN_PADDING = 0  # "masked only" padding, pixels
MAX_PADDING = 256

MIN_HIRES_SCALE = 1.0
MAX_HIRES_SCALE = 4.0
# The hires pass runs the last ``strength`` of a schedule of steps / strength steps (A1111 img2img); a
# tiny strength would make that schedule huge.
MAX_HIRES_SCHEDULE = 1000

# A1111's img2img resize modes and inpaint "masked content" fills.
RESIZE_MODES = {0: "Just resize", 1: "Crop and resize", 2: "Resize and fill"}
FILL_MODES = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}

# Hires fix upscalers built into the engine, by A1111's names: latent interpolation modes, then image
# resamplers (decode, resize, encode).
LATENT_UPSCALERS = (
    "Latent",
    "Latent (antialiased)",
    "Latent (bicubic)",
    "Latent (bicubic antialiased)",
    "Latent (nearest)",
    "Latent (nearest-exact)",
)
IMAGE_UPSCALERS = ("Lanczos", "Nearest", "None")
UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)

RNG_SOURCES = ("gpu", "cpu", "nv")

# A1111 1.10's samplers, in A1111's order (``core.engine.samplers`` is the table from these names to our
# sampler functions; the bot offers these names even where no engine runs in the process).
SAMPLERS = (
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a",
    "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "LCM", "DDIM",
    "DDIM CFG++", "PLMS", "UniPC",
)  # fmt: skip

# A1111's ``second_order`` samplers: two model calls per step (the last step one). The job cost counts
# them (``core.cost``, torch-free); the engine's sampler table marks the same names.
SECOND_ORDER_SAMPLERS = ("DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart")

# A1111 1.10's schedule types (``sd_schedulers.schedulers``), by label. Before 1.9 a sampler name could end
# in one ("DPM++ 2M Karras"); infotext from then is read with it split off.
SCHEDULE_TYPES = (
    "Automatic",
    "Uniform",
    "Karras",
    "Exponential",
    "Polyexponential",
    "SGM Uniform",
    "KL Optimal",
    "Align Your Steps",
    "Simple",
    "Normal",
    "DDIM",
    "Beta",
)

# Post-processing (core/engine/postprocess): upscaling, face restoration, the detailer and the tagger.
MIN_UPSCALE_FACTOR = 1.0  # /upscale "by" (A1111 extras allows up to 8)
MAX_UPSCALE_FACTOR = 8.0
MIN_VISIBILITY = 0.0  # face restoration visibility (A1111 "GFPGAN/CodeFormer visibility") and CodeFormer weight
MAX_VISIBILITY = 1.0
MIN_CONFIDENCE = 0.0  # detector confidence and tagger thresholds
MAX_CONFIDENCE = 1.0
MAX_DILATE_ERODE = 128  # detailer mask growth, pixels, either sign (ADetailer's slider)
MAX_DETECTIONS = 20  # detailer regions per pass (0 = all)
MAX_DETAILER_PASSES = 2  # ADetailer's default number of tabs

# ControlNet units and reference images (IP-Adapter), as sd-webui-controlnet bounds them.
MAX_CONTROL_UNITS = 3  # sd-webui-controlnet's default "Multi-ControlNet" unit count
MIN_CONTROL_WEIGHT = 0.0
MAX_CONTROL_WEIGHT = 2.0
MIN_GUIDANCE = 0.0  # guidance start/end: fractions of the sampling steps
MAX_GUIDANCE = 1.0
MIN_PROCESSOR_RES = 64  # preprocessor resolution (the short side it works at)
MAX_PROCESSOR_RES = 2048
DEFAULT_PROCESSOR_RES = 512
MIN_REFERENCE_SCALE = 0.0
MAX_REFERENCE_SCALE = 2.0
