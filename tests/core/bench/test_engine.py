"""``chant bench engine`` runs end to end on the tiny model (figures are printed, never asserted)."""

from __future__ import annotations

import argparse

from core.bench import engine as bench
from core.config import Settings


def test_bench_reports_every_stage_and_the_ratio() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--steps", "2", "--repeats", "1", "--threads", "1"])
    result = bench.run(args, Settings())
    assert len(result["step_s"]) == 2 and result["steps"] == 2
    for key in (
        "text_encode_s",
        "vae_decode_s",
        "it_per_s",
        "images_per_s",
        "ratio_vs_diffusers",
        "peak_memory_mb",
    ):
        assert result[key] > 0, key
    assert result["device"] == "cpu" and result["shapes"] == "tiny"


def test_bench_scenarios_run_on_the_tiny_model() -> None:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    options = "--scenario all --steps 2 --repeats 1 --threads 1 --batch-sizes 1,2 --users 4 --guilds 2"
    args = parser.parse_args([*options.split(), "--max-batch", "2", "--compile", "cuda-graphs"])
    result = bench.run(args, Settings())
    assert [row["jobs"] for row in result["batch_sweep"]] == [1, 2]
    assert all(row["speedup"] > 0 for row in result["batch_sweep"])
    assert [(row["max_batch"], row["jobs"], row["guilds"]) for row in result["queue"]] == [
        (1, 4, 2),
        (2, 4, 2),
    ]
    assert result["peak_mb_batch_1"] > 0 and result["peak_mb_batch_1_cpu_offload"] > 0
    assert result["peak_mb_batch_2"] > 0 and result["peak_mb_batch_1_vae_tiling"] > 0
    assert [row["jobs_in_first_loop"] for row in result["batch_sweep"]] == [1, 2]
    # max_batch 1: one engine call per job; 2: the worker pairs compatible jobs
    assert [row["engine_calls"] for row in result["queue"]] == [4, 2]
    assert all(0 < row["engine_busy_share"] <= 1 for row in result["queue"])
    assert result["warmup_compile"].startswith("off (asked cuda-graphs")
    assert list(result["warmup_shapes_s"]) == ["64x64/b1", "64x64/b2"]
