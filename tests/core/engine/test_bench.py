"""``chant bench engine`` runs end to end on the tiny model (figures are printed, never asserted)."""

from __future__ import annotations

import argparse

from core.config import Settings
from core.engine import bench


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
