"""The fuzz command and the benchmark run end to end (figures are printed, never asserted)."""

from __future__ import annotations

import argparse

from core.bench import prompt as bench
from core.config import Settings
from core.prompt import fuzz, interpret


def test_fuzz_command_runs_and_reports(capsys):
    assert fuzz.main(["--examples", "300", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("300 examples in ") and "0 other exceptions" in out


def test_bench_prompt_has_and_three_edits_and_break():
    prompt = bench.bench_prompt()
    result = interpret(prompt, 30)
    assert len(result.subprompts) == 2
    assert prompt.count("BREAK") == 1 and prompt.count("[") == 3
    assert [len(s.schedule) for s in result.subprompts] == [2, 2]  # edits at steps 12, 12 and 15
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    figures = bench.run(parser.parse_args(["--repeat", "3"]), Settings())
    assert 280 <= figures["prompt_tokens"] <= 340 and figures["steps"] == 30
    assert {"cold_us", "cold_bpe_us", "cached_us"} <= set(figures)
