"""``chant prompt explain`` and ``chant prompt tokens``: how chant (and A1111) reads a prompt.

Both print readable text by default, one JSON object with ``--json``, and with ``--batch`` read
JSON lines on stdin and write exactly one JSON line per input line (a bad line gives an
``{"error": ...}`` line and the stream goes on). A single unusable prompt gives
``{"error": "...", "column": n}`` (or a readable message) and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.prompt.errors import PromptError
from core.prompt.interpret import Interpretation, interpret
from core.prompt.tokens import EMPHASIS_MODES, EOS, TokenizedPrompt, tokenize_text


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prompt", help="show how a prompt is interpreted (A1111 semantics)")
    cmds = p.add_subparsers(dest="prompt_command", required=True, metavar="COMMAND")

    e = cmds.add_parser("explain", help="schedule, AND parts, weights and extra networks of a prompt")
    e.add_argument("prompt", nargs="?", help="the prompt (omit with --batch)")
    e.add_argument("--steps", type=int, default=20, help="sampler steps used for scheduling (default 20)")
    e.add_argument("--hires-steps", type=int, help="give the hires pass's schedule, with this many steps")
    e.add_argument("--negative", action="store_true", help="read it as a negative prompt (no AND, no tags)")
    e.add_argument("--old-scheduling", action="store_true", help='A1111 "Use old prompt editing timelines"')
    e.add_argument("--json", action="store_true", help="print JSON")
    e.add_argument("--batch", action="store_true", help="JSON lines on stdin -> JSON lines on stdout")
    e.set_defaults(func=_explain)

    t = cmds.add_parser("tokens", help="CLIP tokens of one (scheduled) text in A1111's 77-token chunks")
    t.add_argument("text", nargs="?", help="the text (omit with --batch)")
    t.add_argument(
        "--embedding",
        action="append",
        default=[],
        metavar="NAME=VECTORS",
        help="a textual-inversion embedding and its vector count (repeatable)",
    )
    t.add_argument("--emphasis", choices=EMPHASIS_MODES, help="emphasis mode (default: from settings)")
    t.add_argument("--comma-backtrack", type=int, help="comma padding backtrack (default: from settings)")
    t.add_argument("--json", action="store_true", help="print JSON")
    t.add_argument("--batch", action="store_true", help="JSON lines on stdin -> JSON lines on stdout")
    t.set_defaults(func=_tokens)


# -- explain ---------------------------------------------------------------------------------


def _explain(args: argparse.Namespace, settings) -> int:
    max_chars = settings.limits.max_prompt_chars
    old_default = settings.engine.use_old_scheduling
    if args.batch:
        return _batch(lambda req: _explain_request(req, max_chars, old_default).to_json())
    if args.prompt is None:
        print("chant prompt explain: give a PROMPT or --batch", file=sys.stderr)
        return 2
    try:
        result = interpret(
            args.prompt,
            args.steps,
            negative=args.negative,
            hires_steps=args.hires_steps,
            use_old_scheduling=args.old_scheduling or old_default,
            max_chars=max_chars,
        )
    except (PromptError, ValueError) as exc:
        return _fail(exc, args.json, args.prompt)
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
    else:
        steps = (
            args.hires_steps if args.hires_steps and not (args.old_scheduling or old_default) else args.steps
        )
        print(render_explanation(result, steps))
    return 0


def _explain_request(req: dict, max_chars: int, old_default: bool) -> Interpretation:
    prompt = req.get("prompt")
    if not isinstance(prompt, str):
        raise ValueError('"prompt" must be a string')
    return interpret(
        prompt,
        req.get("steps", 20),
        negative=_flag(req, "negative", False),
        hires_steps=req.get("hires_steps"),
        use_old_scheduling=_flag(req, "old_scheduling", old_default),
        max_chars=max_chars,
    )


def render_explanation(result: Interpretation, steps: int) -> str:
    lines = [f"text: {result.text!r}"]
    for net in result.networks:
        args = [*net.positional, *(f"{k}={v}" for k, v in net.named)]
        lines.append(f"network: {net.kind} {' '.join(repr(a) for a in args)}")
    for n, sub in enumerate(result.subprompts, 1):
        lines.append(f"part {n} (AND weight {sub.weight}):")
        first = 0
        for entry in sub.schedule:
            last = min(entry.until_step, steps - 1)
            used = f"steps {first + 1}-{last + 1}" if last >= first else "never used"
            first = max(first, last + 1)
            lines.append(f"  until step {entry.until_step} ({used}): {entry.text!r}")
            pieces = [("BREAK" if t == "BREAK" and w == -1 else f"{t!r} x{w}") for t, w in entry.attention]
            lines.append("      " + " | ".join(pieces))
    return "\n".join(lines)


# -- tokens ----------------------------------------------------------------------------------


def _tokens(args: argparse.Namespace, settings) -> int:
    emphasis = args.emphasis or settings.engine.emphasis
    backtrack = (
        settings.engine.comma_padding_backtrack if args.comma_backtrack is None else args.comma_backtrack
    )
    max_chars = settings.limits.max_prompt_chars
    if args.batch:
        return _batch(lambda req: _tokens_request(req, emphasis, backtrack, max_chars).to_json())
    if args.text is None:
        print("chant prompt tokens: give a TEXT or --batch", file=sys.stderr)
        return 2
    try:
        embeddings = dict(_embedding_arg(e) for e in args.embedding)
        _check_length(args.text, max_chars)
        result = tokenize_text(
            args.text, embeddings=embeddings, emphasis=emphasis, comma_padding_backtrack=backtrack
        )
    except (PromptError, ValueError) as exc:
        return _fail(exc, args.json, args.text)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(render_tokens(result))
    return 0


def _tokens_request(req: dict, emphasis: str, backtrack: int, max_chars: int) -> TokenizedPrompt:
    text = req.get("text")
    if not isinstance(text, str):
        raise ValueError('"text" must be a string')
    embeddings = req.get("embeddings", {})
    if not isinstance(embeddings, dict):
        raise ValueError('"embeddings" must be an object {name: vectors}')
    _check_length(text, max_chars)
    return tokenize_text(
        text,
        embeddings=embeddings,
        emphasis=req.get("emphasis", emphasis),
        comma_padding_backtrack=req.get("comma_padding_backtrack", backtrack),
    )


def _embedding_arg(value: str) -> tuple[str, int]:
    name, sep, vectors = value.rpartition("=")
    if not sep or not name:
        raise ValueError(f"--embedding wants NAME=VECTORS, not {value!r}")
    try:
        return name, int(vectors)
    except ValueError:
        raise ValueError(f"--embedding {value!r}: VECTORS must be an integer") from None


def _check_length(text: str, max_chars: int) -> None:
    if len(text) > max_chars:
        raise PromptError(f"the text has {len(text)} characters; the limit is {max_chars}", max_chars + 1)


def render_tokens(result: TokenizedPrompt) -> str:
    lines = [f"tokens: {result.token_count}/{result.max_length}"]
    for n, chunk in enumerate(result.chunks, 1):
        end = 76
        while end > 1 and chunk.tokens[end - 1] == EOS and chunk.multipliers[end - 1] == 1.0:
            end -= 1
        body = [
            (f"{tok}" if mult == 1.0 else f"{tok}x{mult}")
            for tok, mult in zip(chunk.tokens[:end], chunk.multipliers[:end], strict=True)
        ]
        lines.append(f"chunk {n}: {' '.join(body)} + {77 - end} x {EOS}")
        for fix in chunk.fixes:
            lines.append(f"  embedding {fix.name!r}: {fix.vectors} vectors at offset {fix.offset}")
    return "\n".join(lines)


# -- shared ----------------------------------------------------------------------------------


def _flag(req: dict, key: str, default: bool) -> bool:
    value = req.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f'"{key}" must be true or false')
    return value


def _error_json(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, PromptError):
        return {"error": exc.message, "column": exc.column}
    return {"error": str(exc)}


def _fail(exc: Exception, as_json: bool, text: str) -> int:
    if as_json:
        print(json.dumps(_error_json(exc), ensure_ascii=False))
    elif isinstance(exc, PromptError):
        print(f"error: {exc.message} at column {exc.column}", file=sys.stderr)
        if exc.column <= len(text) + 1 and "\n" not in text[: exc.column]:
            print(f"  {text[: exc.column + 40]}\n  {' ' * (exc.column - 1)}^", file=sys.stderr)
    else:
        print(f"error: {exc}", file=sys.stderr)
    return 1


def _batch(handle) -> int:
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if not isinstance(request, dict):
                raise ValueError("each line must be a JSON object")
            out = handle(request)
        except json.JSONDecodeError as exc:
            out = {"error": f"not JSON: {exc.msg}"}
        except (PromptError, ValueError, TypeError) as exc:
            out = _error_json(exc)
        print(json.dumps(out, ensure_ascii=False), flush=True)
    return 0
