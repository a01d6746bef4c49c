"""`chant prompt explain` / `chant prompt tokens`: readable, --json, --batch, errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import main
from core.prompt import interpret, tokenize_text

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _no_config(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no ./chant.toml: default settings
    monkeypatch.delenv("CHANT_CONFIG", raising=False)


def run(capsys, *argv: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = main(["prompt", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_json_is_interpret_to_json(capsys):
    prompt = "a [b:c:0.5] <lora:x:0.8:te=1> AND d:0.5"
    code, out, _ = run(capsys, "explain", "--steps", "10", "--json", prompt)
    assert code == 0
    assert json.loads(out) == interpret(prompt, 10).to_json()
    assert json.loads(out)["networks"] == [["lora", ["x", "0.8"], {"te": "1"}]]


def test_explain_options(capsys):
    _, out, _ = run(capsys, "explain", "--json", "--negative", "a AND b:0.5 <lora:x:1>")
    assert json.loads(out)["subprompts"][0]["schedule"][0][1] == "a AND b:0.5 <lora:x:1>"
    _, out, _ = run(capsys, "explain", "--json", "--steps", "20", "--hires-steps", "10", "[b:c:1.5]")
    assert json.loads(out)["subprompts"][0]["schedule"] == [[5, "b", [["b", 1.0]]], [10, "c", [["c", 1.0]]]]
    _, out, _ = run(capsys, "explain", "--json", "--steps", "10", "--old-scheduling", "[b:c:1.0]")
    assert [e[0] for e in json.loads(out)["subprompts"][0]["schedule"]] == [1, 10]


def test_explain_readable(capsys):
    code, out, _ = run(capsys, "explain", "--steps", "10", "a [b:c:0.5] (d:1.2) <lora:n:1>")
    assert code == 0
    assert "network: lora 'n' '1'" in out
    assert "until step 5 (steps 1-6): 'a b (d:1.2)'" in out
    assert "'d' x1.2" in out


def test_explain_error_json_and_exit_status(capsys):
    code, out, _ = run(capsys, "explain", "--json", "x (a:1.2.3)")
    assert code == 1
    assert json.loads(out) == {"error": "'1.2.3' is not a number", "column": 6}
    code, _, err = run(capsys, "explain", "x (a:1.2.3)")
    assert code == 1 and "column 6" in err and "     ^" in err


def test_explain_batch_one_line_out_per_line_in(capsys, monkeypatch):
    lines = [
        json.dumps({"prompt": "a [b:3]", "steps": 10}),
        "not json",
        json.dumps({"prompt": "(a:1.2.3)", "steps": 10}),
        json.dumps({"prompt": "a AND b", "steps": 4, "negative": True}),
        json.dumps({"prompt": "[b:c:1.5]", "steps": 20, "hires_steps": 10}),
        json.dumps({"steps": 10}),
        json.dumps({"prompt": "x", "steps": 0}),
        "",
        json.dumps({"prompt": "[b:c:1.0]", "steps": 10, "old_scheduling": True}),
    ]
    code, out, _ = run(capsys, "explain", "--batch", stdin="\n".join(lines) + "\n", monkeypatch=monkeypatch)
    results = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(results) == len(lines)
    assert results[0] == interpret("a [b:3]", 10).to_json()
    assert "error" in results[1] and "column" not in results[1]
    assert results[2] == {"error": "'1.2.3' is not a number", "column": 4}
    assert results[3] == interpret("a AND b", 4, negative=True).to_json()
    assert results[4] == interpret("[b:c:1.5]", 20, hires_steps=10).to_json()
    assert all("error" in r for r in results[5:8])
    assert results[8] == interpret("[b:c:1.0]", 10, use_old_scheduling=True).to_json()


def test_tokens_json(capsys):
    code, out, _ = run(capsys, "tokens", "--json", "--embedding", "emb=2", "a (emb) BREAK b")
    assert code == 0
    data = json.loads(out)
    assert data == tokenize_text("a (emb) BREAK b", embeddings={"emb": 2}).to_json()
    assert data["chunks"][0]["fixes"] == [[1, "emb", 2]]
    assert data["token_count"] == 76
    assert all(len(c["tokens"]) == 77 == len(c["multipliers"]) for c in data["chunks"])


def test_tokens_options_and_readable(capsys):
    _, out, _ = run(capsys, "tokens", "--json", "--emphasis", "None", "(a)")
    assert json.loads(out)["chunks"][0]["multipliers"][1] == 1.0
    text = "a " * 70 + ", " + "a " * 10
    _, out, _ = run(capsys, "tokens", "--json", "--comma-backtrack", "0", text)
    assert json.loads(out)["chunks"][0]["tokens"][75] == 320
    code, out, _ = run(capsys, "tokens", "a " * 76)
    assert code == 0 and out.startswith("tokens: 76/150\n")


def test_tokens_errors(capsys):
    code, out, _ = run(capsys, "tokens", "--json", "--embedding", "emb", "x")
    assert code == 1 and "NAME=VECTORS" in json.loads(out)["error"]
    code, out, _ = run(capsys, "tokens", "--json", "(a:1..2)")
    assert code == 1 and json.loads(out)["column"] == 4


def test_tokens_batch(capsys, monkeypatch):
    lines = [
        json.dumps({"text": "a emb", "embeddings": {"emb": 1}}),
        json.dumps({"text": "(a)", "emphasis": "None", "comma_padding_backtrack": 0}),
        json.dumps({"text": "a", "emphasis": "bogus"}),
        json.dumps({"text": "x", "embeddings": {"emb": "two"}}),
        "[1, 2]",
    ]
    code, out, _ = run(capsys, "tokens", "--batch", stdin="\n".join(lines) + "\n", monkeypatch=monkeypatch)
    results = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(results) == len(lines)
    assert results[0] == tokenize_text("a emb", embeddings={"emb": 1}).to_json()
    assert results[1] == tokenize_text("(a)", emphasis="None").to_json()
    assert all(set(r) == {"error"} for r in results[2:])


def test_console_script_subprocess(tmp_path):
    chant = ROOT / ".venv" / "bin" / "chant"
    if not chant.exists():
        pytest.skip(".venv/bin/chant is not installed")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("CHANT_CONFIG", None)
    proc = subprocess.run(
        [str(chant), "prompt", "explain", "--json", "--steps", "10", "a [b:c:0.5] AND d:0.5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == interpret("a [b:c:0.5] AND d:0.5", 10).to_json()
