"""``chant bench engine``: per-stage timings of one job, and the same work through diffusers' pipeline.

Default: the tiny random-weight SD1.x model on the CPU (built on the fly, no download). With
``--shapes sd15|sdxl --random-weights`` the real architectures are built from the shipped config
skeletons with random weights (no download) — meant for a GPU (``--device cuda``). Both our engine
and ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline`` run the same components, scheduler,
size, steps, CFG and initial latents, interleaved; the ratio compares medians (ours / diffusers).

``--scenario`` picks what is measured (``all`` runs every one):

- ``single``: one job, per stage, against diffusers' pipeline (above);
- ``batch-sweep``: images/s of N different jobs in one ``generate_batch`` loop vs the same N jobs one at
  a time, for N in ``--batch-sizes``;
- ``queue``: ``--users`` jobs from ``--guilds`` guilds submitted at once through the real queue
  (ChantService + worker on a temporary SQLite database, ``engine.max_batch`` = ``--max-batch``),
  images/s from the worker's start (all jobs queued) to the last result announced, and with the
  submits counted too, against the same with ``max_batch`` 1; engine calls, images per call, the
  engine's busy share and the idle time per engine call (queue + database overhead the GPU waits for);
- ``memory``: peak memory of one job, of a full batch, and of one job with model CPU offload;
- ``warmup``: ``--compile`` (off | default | cuda-graphs) compile + warm-up time for the configured
  sizes and ``--batch-sizes``, then the first job's time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_SIZE = {"tiny": 64, "sd15": 512, "sdxl": 1024}
QUEUE_EVENT_TIMEOUT_S = 300.0
SCENARIOS = ("single", "batch-sweep", "queue", "warmup", "memory", "all")  # memory last: it offloads


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", choices=("tiny", "sd15", "sdxl"), default="tiny")
    parser.add_argument("--random-weights", action="store_true", help="required for sd15/sdxl shapes")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("auto", "fp16", "bf16", "fp32"), default="auto")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=None, help="square side in pixels (default by shapes)")
    parser.add_argument("--sampler", default="Euler")
    parser.add_argument("--cfg", type=float, default=7.0)
    parser.add_argument("--count", type=int, default=1, help="images per job")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (after one warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--scenario", choices=SCENARIOS, default="single")
    parser.add_argument(
        "--batch-sizes", default="1,2,4,8", help="comma-separated job counts (batch-sweep, warmup)"
    )
    parser.add_argument("--users", type=int, default=16, help="jobs submitted at once (queue)")
    parser.add_argument("--guilds", type=int, default=4, help="guilds they come from (queue)")
    parser.add_argument(
        "--max-batch", type=int, default=8, help="engine.max_batch in images (queue, memory); 0 = from free VRAM"
    )
    parser.add_argument("--compile", choices=("off", "default", "cuda-graphs"), default="off")


def _peak_memory_mb(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(args: argparse.Namespace, settings) -> dict[str, Any]:
    import torch

    bench = _Bench(args, settings)
    try:
        scenarios = SCENARIOS[:-1] if args.scenario == "all" else (args.scenario,)
        result: dict[str, Any] = {"scenario": args.scenario}
        for name in scenarios:
            result.update(SCENARIO_FUNCS[name](bench))
        result.update(
            {
                "shapes": args.shapes,
                "device": str(bench.engine.device),
                "card": torch.cuda.get_device_name(bench.engine.device)
                if bench.engine.device.type == "cuda"
                else "cpu",
                "dtype": str(bench.engine.dtype).removeprefix("torch."),
                "threads": torch.get_num_threads(),
                "size": f"{bench.size}x{bench.size}",
                "steps": args.steps,
                "sampler": args.sampler,
            }
        )
        return result
    finally:
        bench.close()


class _Bench:
    """The engine and model every scenario uses (built once)."""

    def __init__(self, args: argparse.Namespace, settings) -> None:
        self.args = args
        self.settings = settings
        self._setup(args, settings)

    def close(self) -> None:
        self.engine.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def sync(self) -> None:
        import torch

        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)

    def _setup(self, args, settings) -> None:
        import dataclasses
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch

        from core.config import ModelSettings
        from core.engine import models
        from core.engine.diffusers_engine import DiffusersEngine
        from core.types import GenerationRequest

        if args.shapes != "tiny" and not args.random_weights:
            raise SystemExit("chant bench engine: --shapes sd15/sdxl needs --random-weights (no download)")
        if args.threads:
            torch.set_num_threads(args.threads)
        size = args.size or DEFAULT_SIZE[args.shapes]
        tmp = Path(tempfile.mkdtemp(prefix="chant-bench-"))
        engine_settings = dataclasses.replace(
            settings.engine,
            device=args.device,
            dtype=args.dtype,
            models={"bench": ModelSettings(source=str(tmp))},
            default_model="bench",
            embedding_dirs=(),
            preview_every=0,
            max_loaded_models=1,
            compile=args.compile,
            warmup_sizes=(f"{size}x{size}",),
            batch_buckets=tuple(_parse_batch_sizes(args.batch_sizes)),
            # the engine takes every batch the scenarios hand it (0: what free VRAM holds)
            max_batch=0 if args.max_batch == 0 else max(args.max_batch, *_parse_batch_sizes(args.batch_sizes)),
        )
        engine = DiffusersEngine(engine_settings)
        source = models.resolve_model(engine_settings, "bench")
        if args.shapes == "tiny":
            from core.testing.tiny import build_tiny_sd15

            tiny = build_tiny_sd15(tmp / "tiny")
            source = dataclasses.replace(source, location=str(tiny.single_file), config=str(tiny.config))
            model = models.load_model(source, engine.device, engine.dtype)
            source = models.resolve_model(engine_settings, "bench")
            model.source = source
        else:
            from core.testing.tiny import random_weight_model

            model = random_weight_model(args.shapes, engine.device, engine.dtype, source)
        start = time.perf_counter()
        engine.models.put(model)  # compile != off on CUDA: compiles and warms up here, as at start
        self.prepare_s = time.perf_counter() - start

        request = GenerationRequest(
            prompt="a photograph of an astronaut riding a horse, highly detailed",
            negative_prompt="blurry, low quality",
            steps=args.steps,
            cfg_scale=args.cfg,
            sampler=args.sampler,
            seed=1234,
            width=size,
            height=size,
            count=args.count,
            model="bench",
            rng="cpu",
        )
        self.engine, self.model, self.tmp, self.size, self.request = engine, model, tmp, size, request
        self.engine_settings = engine_settings


def _single(bench: _Bench) -> dict[str, Any]:
    import diffusers
    import torch

    args, engine = bench.args, bench.engine
    theirs = _diffusers_run(bench)

    def ours() -> Any:
        start = time.perf_counter()
        engine.generate(bench.request)
        bench.sync()
        return time.perf_counter() - start, engine.last_stats

    ours()  # warm-up
    theirs()
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    our_runs, our_png, their_runs, stats = [], [], [], []
    for _ in range(max(1, args.repeats)):
        seconds, stat = ours()
        our_runs.append(seconds)
        our_png.append(stat.png)
        stats.append(stat)
        their_runs.append(theirs())
    peak = _peak_memory_mb(engine.device)
    if engine.device.type == "cuda":  # per-stage figures need a GPU sync at every boundary
        engine.sync_stages = True
        stats = [ours()[1] for _ in range(max(1, args.repeats))]
        engine.sync_stages = False
    median_stat = sorted(stats, key=lambda s: s.total)[len(stats) // 2]
    steps = median_stat.steps
    ours_total = statistics.median(our_runs)
    ours_without_png = statistics.median(total - png for total, png in zip(our_runs, our_png, strict=True))
    theirs_total = statistics.median(their_runs)
    return {
        "cfg": args.cfg,
        "images_per_job": args.count,
        "repeats": len(our_runs),
        "text_encode_s": round(median_stat.encode, 5),
        "step_s": [round(s, 5) for s in steps],
        "step_median_s": round(statistics.median(steps), 5),
        "it_per_s": round(len(steps) / sum(steps), 3),
        "vae_decode_s": round(median_stat.decode, 5),
        "png_s": round(median_stat.png, 5),
        "total_s": round(ours_total, 5),
        "images_per_s": round(args.count / ours_total, 3),
        "diffusers_pipeline_s": round(theirs_total, 5),
        "diffusers_images_per_s": round(args.count / theirs_total, 3),
        "ratio_vs_diffusers": round(ours_without_png / theirs_total, 4),
        "ratio_vs_diffusers_with_png": round(ours_total / theirs_total, 4),
        "peak_memory_mb": round(peak, 1),
        "peak_memory_kind": "cuda max_memory_allocated"
        if engine.device.type == "cuda"
        else "process max RSS",
        "model_build_s": round(bench.model.load_seconds, 3),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
    }


def _diffusers_run(bench: _Bench):
    """A function that runs the bench's job through diffusers' own pipeline (same components and initial
    latents, diffusers' Euler on "linspace" timesteps: A1111's Euler to rounding) and returns its seconds.
    With another ``--sampler`` it stays a cost reference only (one UNet call a step)."""
    import torch
    from diffusers import EulerDiscreteScheduler

    from core.engine import rng

    args, engine, model, request, size = bench.args, bench.engine, bench.model, bench.request, bench.size
    pipe = type(model.pipe)(**model.pipe.components)
    pipe.set_progress_bar_config(disable=True)
    latents = rng.ImageRNG(
        (4, size // model.vae_scale_factor, size // model.vae_scale_factor),
        [1234 + i for i in range(args.count)],
        source="cpu",
    ).first()

    def theirs() -> float:
        pipe.scheduler = EulerDiscreteScheduler.from_config(model.pipe.scheduler.config, timestep_spacing="linspace")
        start = time.perf_counter()
        with torch.no_grad():
            pipe(
                request.prompt,
                negative_prompt=request.negative_prompt,
                num_inference_steps=args.steps,
                guidance_scale=args.cfg,
                latents=latents.to(engine.device, engine.dtype),
                height=size,
                width=size,
                num_images_per_prompt=args.count,
            )
        bench.sync()
        return time.perf_counter() - start

    return theirs


def _jobs(bench: _Bench, n: int) -> list:
    """``n`` different jobs (prompt, seed, CFG) that fit one batch."""
    subjects = ("a horse", "a castle", "a red fox", "a lighthouse", "a forest", "a city", "a cat", "a ship")
    return [
        bench.request.replace(
            prompt=f"a photograph of {subjects[i % len(subjects)]}, highly detailed, [day:night:0.5]",
            seed=1000 + i,
            cfg_scale=bench.args.cfg + (i % 3),
        )
        for i in range(n)
    ]


def _parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--batch-sizes must be comma-separated integers, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise SystemExit("--batch-sizes must be positive integers")
    return sizes


def _batch_sizes(bench: _Bench) -> list[int]:
    return _parse_batch_sizes(bench.args.batch_sizes)


def _batch_sweep(bench: _Bench) -> dict[str, Any]:
    """images/s of N jobs in one loop vs the same jobs one at a time."""
    engine = bench.engine
    repeats = max(1, bench.args.repeats)
    engine.generate_batch(_jobs(bench, 2))  # warm-up
    rows = []
    for n in _batch_sizes(bench):
        jobs = _jobs(bench, n)
        images = n * bench.request.count
        together, alone = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            results = engine.generate_batch(jobs)
            bench.sync()
            together.append(time.perf_counter() - start)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                raise SystemExit(f"batch of {n} failed: {failed[0]}")
            loop_jobs = results[0].timings.get("batch_jobs", 1.0)
            start = time.perf_counter()
            for job in jobs:
                engine.generate(job)
            bench.sync()
            alone.append(time.perf_counter() - start)
        t_batch, t_alone = statistics.median(together), statistics.median(alone)
        rows.append(
            {
                "jobs": n,
                "batched_images_per_s": round(images / t_batch, 3),
                "one_at_a_time_images_per_s": round(images / t_alone, 3),
                "speedup": round(t_alone / t_batch, 3),
                "jobs_in_first_loop": int(loop_jobs),  # < jobs: the engine split the batch (memory)
            }
        )
    return {"batch_sweep": rows}


def _queue(bench: _Bench) -> dict[str, Any]:
    """Jobs from several guilds submitted at once through ChantService + worker (SQLite), images/s."""
    import asyncio

    runs = {}
    for max_batch in dict.fromkeys((1, bench.args.max_batch)):
        runs[max_batch] = asyncio.run(_queue_run(bench, max_batch))
    base = runs[1]["images_per_s"]
    return {
        "queue": [
            {"max_batch": mb, **r, "speedup_vs_max_batch_1": round(r["images_per_s"] / base, 3)}
            for mb, r in runs.items()
        ]
    }


async def _queue_run(bench: _Bench, max_batch: int) -> dict[str, Any]:
    from core.bootstrap import bootstrap, open_database
    from core.services import Actor, ImagineOptions

    args, users = bench.args, bench.args.users
    engine = _KeepOpen(bench.engine)  # the service closes its engine on stop; the next run needs it
    settings = _queue_settings(bench, max_batch)
    db = await open_database(settings)
    service = await bootstrap(settings, db=db, engine=engine, worker=True)
    events = service.events()
    try:
        start = time.perf_counter()
        for i in range(users):
            guild = 1 + i % args.guilds
            await service.submit_imagine(
                Actor(user_id=100 * guild + i, guild_id=guild, channel_id=guild),
                ImagineOptions(
                    prompt=_jobs(bench, i + 1)[i].prompt,
                    negative=bench.request.negative_prompt,
                    width=bench.size,
                    height=bench.size,
                    steps=args.steps,
                    cfg=args.cfg + i % 3,
                    sampler=args.sampler,
                    seed=1000 + i,
                    count=args.count,
                    model="bench",
                ),
            )
        submitted = time.perf_counter() - start
        started = time.perf_counter()
        await service.start()
        failed = await _wait_for_results(events, users)
        seconds = time.perf_counter() - started
        worker = service.worker
        busy, batches = worker.engine_busy_s, worker.batches
    finally:
        await service.stop()
        await db.dispose()
    if failed:
        raise SystemExit(f"queue bench: {failed} of {users} jobs failed")
    return {
        "jobs": users,
        "guilds": args.guilds,
        "submit_s": round(submitted, 3),
        # from the worker's start (every job queued) to the last result announced
        "seconds": round(seconds, 3),
        "images_per_s": round(users * args.count / seconds, 3),
        "images_per_s_incl_submit": round(users * args.count / (seconds + submitted), 3),
        "engine_calls": batches,
        "images_per_engine_call": round(users * args.count / max(batches, 1), 2),
        # share of the wall time (submit to last result) the engine was running: the rest is queue,
        # database and Discord-side overhead the GPU waits for
        "engine_busy_share": round(busy / seconds, 3),
        # wall time from the worker's start to the last result, outside engine calls, per call
        "idle_s_per_engine_call": round((seconds - busy) / max(batches, 1), 4),
    }


def _queue_settings(bench: _Bench, max_batch: int):
    """The bench's settings with a fresh SQLite database, limits that take every job, a fast poll."""
    import dataclasses

    from core.config import LimitSettings, QueueSettings

    args, users = bench.args, bench.args.users
    folder = Path(tempfile.mkdtemp(prefix="chant-bench-queue-", dir=bench.tmp))
    return dataclasses.replace(
        bench.settings,
        engine=dataclasses.replace(bench.engine_settings, max_batch=max_batch),
        database=dataclasses.replace(bench.settings.database, url=f"sqlite+aiosqlite:///{folder}/bench.db"),
        limits=LimitSettings(
            max_steps=max(args.steps, 50),
            max_pixels=max(bench.size * bench.size, 1024 * 1024),
            max_images=max(args.count, 4),
            max_queued_per_user=users,
            max_queued_per_guild=users,
            max_queued_global=users,
        ),
        queue=QueueSettings(poll_interval_s=0.05, lease_seconds=600.0),
    )


async def _wait_for_results(events, users: int) -> int:
    """Wait until every job is done or failed; returns how many failed."""
    import asyncio

    from core.services import JobDone, JobFailed

    done = failed = 0
    while done + failed < users:
        try:  # a stuck queue ends the benchmark instead of hanging it
            event = await asyncio.wait_for(anext(events), QUEUE_EVENT_TIMEOUT_S)
        except TimeoutError:
            raise SystemExit(
                f"queue bench: no result for {QUEUE_EVENT_TIMEOUT_S:.0f}s ({done + failed} of {users} done)"
            ) from None
        if isinstance(event, JobDone):
            done += 1
        elif isinstance(event, JobFailed):
            failed += 1
    return failed


class _KeepOpen:
    """The engine, except that ``close()`` does nothing."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def close(self) -> None:
        pass


def _memory(bench: _Bench) -> dict[str, Any]:
    """Peak memory of one job, a full batch, one job with VAE tiling + slicing, one with model CPU
    offload (CUDA: max allocated and max reserved by PyTorch; a card also needs its CUDA context), and on
    CUDA the batch size ``engine.max_batch = 0`` would pick now (measured footprint, free memory)."""
    import dataclasses

    import torch

    from core.engine import accel, memory

    engine, device, model = bench.engine, bench.engine.device, bench.model
    cuda = device.type == "cuda"
    out: dict[str, Any] = {
        "memory_kind": "cuda max_memory_allocated / max_memory_reserved"
        if cuda
        else "process max RSS (monotonic)"
    }

    def peak(name: str, jobs) -> None:
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        results = engine.generate_batch(jobs)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            out[f"{name}_failed"] = str(failed[0])
            return
        out[f"peak_mb_{name}"] = round(_peak_memory_mb(device), 1)
        if cuda:
            out[f"peak_reserved_mb_{name}"] = round(torch.cuda.max_memory_reserved(device) / 2**20, 1)

    size = bench.size
    if cuda:
        footprint = memory.measure(engine, model, size, size)
        free = memory.free_bytes(device)
        out["auto_batch"] = {
            "per_image_mb": round(footprint.per_image / 2**20, 1),
            "fixed_mb": round(footprint.fixed / 2**20, 1),
            "vae_decode_chunk_mb": round(footprint.decode / 2**20, 1),
            "free_mb": round(free / 2**20),
            "images": memory.capacity(free, footprint),
        }
    n = bench.args.max_batch or (out["auto_batch"]["images"] if cuda else memory.CPU_AUTO)
    peak("batch_1", _jobs(bench, 1))
    peak(f"batch_{n}", _jobs(bench, n))
    saved = engine.settings
    engine.settings = dataclasses.replace(saved, vae_tiling=True, vae_slicing=True)
    try:
        peak("batch_1_vae_tiling", _jobs(bench, 1))
    finally:
        engine.settings = saved
        model.pipe.vae.disable_tiling()
        model.pipe.vae.disable_slicing()
    accel.enable_cpu_offload(model, device)  # last: the hooks stay on this model
    peak("batch_1_cpu_offload", _jobs(bench, 1))
    return out


def _warmup(bench: _Bench) -> dict[str, Any]:
    """Compile + warm-up time (done when the model was adopted, as at start); the first job after it.

    With ``--compile off`` (or on a CPU, where compile is refused) the same warm-up runs eager.
    """
    from core.engine import accel

    engine, model, args = bench.engine, bench.model, bench.args
    report = accel.last_warmup(model)
    compiled = report is not None
    seconds = bench.prepare_s
    if report is None:
        start = time.perf_counter()
        report = accel.warmup(engine, model)
        seconds = time.perf_counter() - start
    start = time.perf_counter()
    engine.generate(bench.request)
    bench.sync()
    return {
        "warmup_compile": args.compile
        if compiled or args.compile == "off"
        else f"off (asked {args.compile}; compile needs CUDA)",
        "warmup_s": round(seconds, 3),
        "warmup_shapes_s": report["shapes"],
        "first_job_after_warmup_s": round(time.perf_counter() - start, 3),
    }


SCENARIO_FUNCS = {
    "single": _single,
    "batch-sweep": _batch_sweep,
    "queue": _queue,
    "memory": _memory,
    "warmup": _warmup,
}
