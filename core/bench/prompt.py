"""``chant bench prompt``: explain + tokens for a 300-token prompt (AND, three edits, BREAK, 30 steps).

Figures are medians in microseconds per prompt:
- ``cold_us``: a prompt chant has not seen (parse and emphasis caches cleared), with the BPE word
  cache warm, as in a running bot;
- ``cold_bpe_us``: also with the BPE word cache cleared (the first prompt after start);
- ``cached_us``: the same prompt again (a reroll);
- ``long_word_ms``: BPE of one 6,000-letter word (random letters, word cache cleared): the worst a
  Discord prompt can ask of the merge loop.
"""

from __future__ import annotations

import random
import statistics
import time

from core.prompt import attention, parser
from core.prompt.interpret import interpret
from core.prompt.tokens import ClipTokenizer, tokenize_text

_WORDS = (
    "masterpiece, best quality, ultra detailed, 1girl, solo, long silver hair, blue eyes, looking at viewer, "
    "(smile:1.2), school uniform, pleated skirt, [cherry blossoms:autumn leaves:0.4], outdoors, sunlight, "
    "depth of field, bokeh, ((detailed face)), soft lighting, cinematic composition, BREAK "
    "intricate background, old town street, cobblestone, lanterns, evening sky, [clouds:stars:12], "
    "warm colors, film grain, highres, sharp focus, 8k wallpaper, "
)
_PART_2 = (
    "watercolor painting, (pastel colors:0.8), [sketch:ink lines:0.5], soft edges, paper texture, "
    "dreamy atmosphere, light particles, gentle wind, flowing ribbons, petals in the air, "
    "muted tones, by a lake, reflections, mist over water, "
    "golden hour glow, serene, tranquil, "
)


def _plain(text: str) -> str:
    return text.replace("BREAK ", "").replace("[", "").replace("]", "")


def bench_prompt() -> str:
    """About 300 tokens: two AND parts (the second weighted), three edits, one BREAK."""
    return f"{_WORDS}{_plain(_WORDS)} AND {_PART_2}{_plain(_PART_2)}:0.7"


def explain_and_tokens(prompt: str, steps: int = 30) -> int:
    """What a generation needs from core.prompt: the interpretation and every distinct text's chunks."""
    result = interpret(prompt, steps)
    tokens = 0
    for sub in result.subprompts:
        for entry in sub.schedule:
            tokens = max(tokens, tokenize_text(entry.text).token_count)
    return tokens


def _median_us(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def add_arguments(p) -> None:
    p.add_argument("--repeat", type=int, default=300, help="timed runs per figure (default 300)")


def run(args, settings) -> dict:
    prompt = bench_prompt()
    tok = ClipTokenizer.default()
    result = interpret(prompt, 30)
    token_count = sum(len(tok.encode(t)) for t, _ in result.subprompts[0].schedule[0].attention) + sum(
        len(tok.encode(t)) for t, _ in result.subprompts[1].schedule[0].attention
    )
    explain_and_tokens(prompt)  # warm the BPE word cache

    def cold() -> None:
        parser.parse.cache_clear()
        attention.parse_attention_cached.cache_clear()
        explain_and_tokens(prompt)

    def cold_bpe() -> None:
        tok.clear_cache()
        cold()

    cold_us = _median_us(cold, args.repeat)
    letters = random.Random(0)
    long_word = "".join(letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6000))

    def long_word_bpe() -> None:
        tok.clear_cache()
        tok.encode(long_word)

    return {
        "prompt_chars": len(prompt),
        "prompt_tokens": token_count,
        "subprompts": len(result.subprompts),
        "schedule_entries": sum(len(s.schedule) for s in result.subprompts),
        "steps": 30,
        "cold_us": round(cold_us, 1),
        "cold_bpe_us": round(_median_us(cold_bpe, max(20, args.repeat // 10)), 1),
        "cached_us": round(_median_us(lambda: explain_and_tokens(prompt), args.repeat), 1),
        "long_word_ms": round(_median_us(long_word_bpe, 5) / 1000, 1),
        "target_us": 1000,
        "meets_target": cold_us <= 1000,
    }
