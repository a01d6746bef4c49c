"""``chant bench sampling`` and ``chant bench postprocess`` run through the bench dispatcher (figures
are printed, never asserted)."""

from __future__ import annotations

import argparse
import json

from core.bench import cli
from core.config import Settings


def test_bench_sampling_and_postprocess_are_targets(capsys) -> None:
    assert cli.TARGETS["sampling"] == "core.bench.sampling"
    assert cli.TARGETS["postprocess"] == "core.bench.postprocess"
    args = argparse.Namespace(
        target="sampling", json=True, rest=["--steps", "2", "--repeats", "1", "--sampler", "DPM++ 2M"]
    )
    assert cli._run(args, Settings()) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sampler"] == "DPM++ 2M" and result["steps"] == 2
    assert result["library_s_per_step"] > 0 and result["bare_s_per_step"] > 0
