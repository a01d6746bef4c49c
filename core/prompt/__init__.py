"""The A1111 (v1.10.1) prompt language: what a prompt means at every sampler step, and its CLIP tokens.

Pure Python (lark and regex only; no torch). ``interpret`` gives the scheduled, weighted text of a
prompt; ``tokenize_text`` turns one scheduled text into A1111's 77-token chunks of ids and
multipliers, which the engine encodes.
"""

from core.prompt.attention import parse_attention
from core.prompt.errors import PromptError
from core.prompt.interpret import DISCORD_LIMIT, Interpretation, ScheduleEntry, SubPrompt, interpret
from core.prompt.text import ExtraNetwork
from core.prompt.tokens import (
    BOS,
    COMMA,
    EMPHASIS_MODES,
    EOS,
    Chunk,
    ClipTokenizer,
    EmbeddingFix,
    TokenizedPrompt,
    tokenize_text,
)

__all__ = [
    "BOS",
    "COMMA",
    "DISCORD_LIMIT",
    "EMPHASIS_MODES",
    "EOS",
    "Chunk",
    "ClipTokenizer",
    "EmbeddingFix",
    "ExtraNetwork",
    "Interpretation",
    "PromptError",
    "ScheduleEntry",
    "SubPrompt",
    "TokenizedPrompt",
    "interpret",
    "parse_attention",
    "tokenize_text",
]
