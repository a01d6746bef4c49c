"""``chant bench postprocess``: upscale and detailer timings (figures, never timed tests).

- upscale: ×4 of a ``--size``² image through the tiled path, with a random-weight model of ``--arch``
  (tiny by default — the figure then measures the tiling machinery, not a real model; ``--full`` gives
  the real R-ESRGAN 4x+ / realesr-general-x4v3 shapes, for a GPU).
- detailer: seconds per face for detection + mask + paste-back with a stub inpaint; the configured
  ``postprocess.face_detector`` if it is installed, else a stub detector (said so in the output). With
  ``--inpaint tiny`` the faces are repainted by the real engine (a tiny random-weight SD 1.5 built in a
  temporary folder): a job with the detailer against the same job without, per face.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.config import Settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenario", choices=("upscale", "detailer", "all"), default="all")
    parser.add_argument("--arch", default="Compact", help="upscaler architecture: ESRGAN, Compact, SwinIR, DAT, HAT")
    parser.add_argument("--full", action="store_true", help="real model shapes (ESRGAN, Compact) with random weights")
    parser.add_argument("--size", type=int, default=512, help="input side in pixels")
    parser.add_argument("--tile", type=int, default=None, help="tile size (default: postprocess.upscale_tile)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap (default: postprocess.upscale_tile_overlap)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--faces", type=int, default=4, help="faces in the detailer image (stub detector)")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs after one warm-up")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (--inpaint tiny)")
    parser.add_argument(
        "--inpaint", choices=("stub", "tiny"), default="stub",
        help="detailer inpaint: a stub, or the engine on a tiny random-weight SD 1.5 (--size, 20 steps)",
    )  # fmt: skip


def _noise(side: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), "RGB")


def _timed(fn: Any, repeat: int) -> float:
    fn()  # warm-up: loading, first-call allocations, cuDNN autotuning
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_upscale(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    import dataclasses

    import torch

    from core.engine.postprocess.tiling import tile_starts
    from core.engine.postprocess.upscalers import Upscalers
    from core.testing.tiny_upscalers import build_tiny_upscaler

    tile = settings.postprocess.upscale_tile if args.tile is None else args.tile
    overlap = settings.postprocess.upscale_tile_overlap if args.overlap is None else args.overlap
    with tempfile.TemporaryDirectory() as folder:
        build_tiny_upscaler(args.arch, Path(folder) / "bench.safetensors", scale=4, full=args.full)
        post = dataclasses.replace(settings.postprocess, upscaler_dirs=(folder,), upscale_tile=tile,
                                   upscale_tile_overlap=overlap)
        upscalers = Upscalers(post, allow_pickle=False, device=args.device)
        image = _noise(args.size)
        model = upscalers.load("bench")
        if model.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(model.device)

        def run() -> None:
            upscalers.upscale_by(image, "bench", 4)
            if model.device.type == "cuda":
                torch.cuda.synchronize(model.device)

        seconds = _timed(run, args.repeat)
        tiles = len(tile_starts(args.size, min(tile, args.size), overlap)) ** 2 if tile > 0 else 1
        result = {
            "upscale_model": f"{args.arch} ({'full-size' if args.full else 'tiny'} random weights)",
            "upscale_device": str(model.device),
            "upscale_dtype": str(model.dtype).removeprefix("torch."),
            "upscale_input": f"{args.size}x{args.size}",
            "upscale_output": f"{args.size * 4}x{args.size * 4}",
            "upscale_tiles": tiles,
            "upscale_seconds": round(seconds, 4),
            "upscale_output_megapixels_per_s": round((args.size * 4) ** 2 / 1e6 / seconds, 3),
        }
        if model.device.type == "cuda":
            result["upscale_peak_memory_mib"] = round(torch.cuda.max_memory_allocated(model.device) / 2**20, 1)
        return result


class _StubDetector:
    name = "stub"

    def __init__(self, faces: int, side: int) -> None:
        from core.engine.postprocess.detect import Detection

        step = side // (faces + 1)
        self.found = [Detection((step * (i + 1) - 24, side / 2 - 24, step * (i + 1) + 24, side / 2 + 24), 0.9)
                      for i in range(faces)]

    def detect(self, image: Image.Image, confidence: float) -> list:
        return list(self.found)


def bench_detailer(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from core.engine.postprocess.detailer import DetailerOptions, detail
    from core.engine.postprocess.detect import Detectors
    from core.engine.postprocess.files import PostprocessError

    image = _noise(args.size)
    name = settings.postprocess.face_detector
    detectors = Detectors(settings.postprocess.detector_dirs, device=args.device)
    try:
        detector = detectors.get(name)
        label = f"{name} (onnxruntime)"
    except PostprocessError:
        detector, label = _StubDetector(args.faces, args.size), "stub (no face detector installed)"
    regions: list[int] = []

    def run() -> None:
        result = detail(image, [DetailerOptions(model=name)], lambda _: detector, lambda img, mask, opts: img)
        regions[:] = [len(result.regions[0])]

    seconds = _timed(run, args.repeat)
    faces = regions[0] if regions else 0
    return {
        "detailer_detector": label,
        "detailer_faces": faces,
        "detailer_seconds": round(seconds, 4),
        "detailer_seconds_per_face": round(seconds / faces, 4) if faces else None,
        "detailer_inpaint": "stub (returns its input; the engine's inpaint is not timed here)",
    }


def bench_detailer_engine(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    """The detailer through the engine: one job with it, one without; the difference per face."""
    import dataclasses

    from core.config import EngineSettings, ModelSettings
    from core.engine.diffusers_engine import DiffusersEngine
    from core.testing.tiny import build_tiny_sd15
    from core.types import GenerationRequest

    with tempfile.TemporaryDirectory() as folder:
        tiny = build_tiny_sd15(Path(folder) / "tiny")
        engine_settings = EngineSettings(
            device=args.device, models={"tiny": ModelSettings(source=str(tiny.single_file), config=str(tiny.config))},
            default_model="tiny", model_dirs=(), embedding_dirs=(), preview_every=0, threads=args.threads,
        )  # fmt: skip
        engine = DiffusersEngine(engine_settings, postprocess=settings.postprocess)
        detector = _StubDetector(args.faces, args.size)
        engine.post.detectors.get = lambda name: detector  # type: ignore[method-assign]  # no ONNX file needed
        plain = GenerationRequest(prompt="a crowd of people", width=args.size, height=args.size, steps=20, seed=1)
        detailed = dataclasses.replace(plain, detailer="stub")
        engine.generate(detailed)  # warm-up: loading, first-call allocations
        # The pipeline times its after-decoding stage itself (detection, each face's inpaint, paste-back),
        # so the figure does not depend on the denoising of the job around it.
        after = min(engine.generate(detailed).timings["after_decoding"] for _ in range(max(1, args.repeat)))
        job = min(engine.generate(plain).timings["total"] for _ in range(max(1, args.repeat)))
        engine.close()
    return {
        "detailer_engine_model": f"tiny SD 1.5 (random weights), {args.size}x{args.size}, 20 steps, strength 0.4",
        "detailer_engine_faces": args.faces,
        "detailer_engine_job_seconds": round(job, 4),
        "detailer_engine_after_decoding_seconds": round(after, 4),
        "detailer_engine_seconds_per_face": round(after / max(1, args.faces), 4),
    }


def run(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    result: dict[str, Any] = {}
    if args.scenario in ("upscale", "all"):
        result |= bench_upscale(args, settings)
    if args.scenario in ("detailer", "all"):
        result |= bench_detailer(args, settings)
        if args.inpaint == "tiny":
            result |= bench_detailer_engine(args, settings)
    return result
