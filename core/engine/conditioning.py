"""A1111's prompt encoder: the one place where prompt plans become tensors.

``core.prompt`` turns a prompt into scheduled texts and 77-token chunks (ids, emphasis multipliers,
textual-inversion placeholders). This module runs those chunks through the model's CLIP encoders
exactly as A1111 does (A1111-SEMANTICS.md §7-§10):

- every chunk batch goes through the encoder on its own and the outputs are concatenated (77·k
  tokens); the texts of one encode call are padded to the same chunk count with empty chunks;
- CLIP skip in A1111's numbering (1 = last layer; N >= 2 takes hidden state -N through the final
  layer norm) for SD1; SD2 uses its penultimate layer; SDXL uses the penultimate hidden state of
  both encoders without the final norm, the pooled vector of OpenCLIP-G from the first chunk, and
  pads G's ids after the first end token with 0;
- emphasis "Original" (multiply, then restore the mean of the whole chunk batch), "No norm",
  "Ignore", "None";
- textual-inversion vectors replace the placeholder rows after BOS (``EmbeddingsWithFixes``);
- ``AND`` parts of different lengths are padded by repeating their last token vector.

A1111's comma-backtracking bug with embeddings (§10.4) is reproduced, as ``core.prompt`` keeps it:
a fix may point into the padding of the previous chunk; vectors are clipped to the 77 rows there.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from core.types import GenerationError

log = logging.getLogger(__name__)

BOS = 49406
EOS = 49407
_NAME_SYMBOLS = str.maketrans("", "", ":,")  # A1111 drops them from names in the infotext hashes
EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


@dataclass
class Cond:
    """One text's conditioning: ``embeds`` [tokens, channels]; SDXL also ``pooled`` [channels]."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None


# --- textual inversion -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Embedding:
    name: str
    vectors: Mapping[str, torch.Tensor]  # "clip_l" / "clip_g" (SD1/SD2: "clip_l" only) -> [n, width]
    path: Path | None = None
    error: str | None = None  # a damaged file: why it cannot be read (its name still matches in prompts)

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0] if self.vectors else 1

    def short_hash(self) -> str | None:
        """A1111's "TI hashes" value: the first 12 hex digits of the file's sha256."""
        from core.engine.networks.hashes import file_sha256

        return file_sha256(self.path)[:12] if self.path is not None else None


def _tensor_of(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict) and len(value) == 1:
        return _tensor_of(next(iter(value.values())))
    return None


def read_embedding_file(path: Path) -> dict[str, torch.Tensor]:
    """The vectors of an A1111/diffusers textual-inversion file, by encoder ("clip_l"/"clip_g").

    ``.safetensors`` load directly; A1111 ``.pt`` and diffusers ``.bin`` files load with
    ``torch.load(weights_only=True)`` (no code runs). A file we cannot read (damaged, truncated, an
    unknown layout) raises ValueError naming it.
    """
    try:
        return _read_embedding_file(path)
    except ValueError:
        raise
    except Exception as exc:  # safetensors, OSError, a tensor that is not one: damaged, never a traceback
        raise ValueError(f"{path.name}: cannot be read ({type(exc).__name__}: {exc})"[:300]) from None


def _read_embedding_file(path: Path) -> dict[str, torch.Tensor]:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(path))
    elif suffix in (".pt", ".bin"):
        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path.name}: cannot be loaded safely (weights_only): {exc}") from None
    else:
        raise ValueError(f"{path.name}: not an embedding file (.safetensors, .pt or .bin)")
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: unexpected content {type(data).__name__}")
    if "clip_l" in data and "clip_g" in data:
        if not all(isinstance(data[k], torch.Tensor) and data[k].ndim == 2 for k in ("clip_l", "clip_g")):
            raise ValueError(f"{path.name}: clip_l/clip_g are not [vectors, width] tensors")
        return {"clip_l": data["clip_l"], "clip_g": data["clip_g"]}
    if "string_to_param" in data:  # A1111 .pt
        tensor = _tensor_of(data["string_to_param"])
    elif "emb_params" in data:  # A1111 safetensors
        tensor = data["emb_params"]
    else:  # diffusers: {"<token>": tensor}
        tensor = _tensor_of(data)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{path.name}: unknown embedding layout (keys: {', '.join(map(str, data))[:200]})")
    tensor = tensor.detach().float()
    if tensor.ndim == 1:
        tensor = tensor[None]
    if tensor.ndim != 2:
        raise ValueError(f"{path.name}: embedding tensor has shape {tuple(tensor.shape)}")
    return {"clip_l": tensor}


class EmbeddingLibrary:
    """Textual-inversion embeddings found by file stem in the configured folders (never elsewhere).

    A damaged file is logged once and skipped, so other prompts are unaffected; a prompt that names
    it gets an error naming the file (``PromptEncoder.tokenize``).
    """

    SUFFIXES = (".safetensors", ".pt", ".bin")

    def __init__(self, folders: Sequence[str | Path]) -> None:
        self.folders = [Path(f) for f in folders]
        self._cache: dict[Path, tuple[float, dict[str, torch.Tensor] | str]] = {}  # str: why damaged

    def _files(self) -> Iterator[Path]:
        for folder in self.folders:
            if not folder.is_dir():
                continue
            root = folder.resolve()
            for path in sorted(folder.rglob("*")):
                if (
                    path.suffix.lower() in self.SUFFIXES
                    and path.is_file()
                    and path.resolve().is_relative_to(root)
                ):
                    yield path

    def for_widths(self, widths: Mapping[str, int]) -> dict[str, Embedding]:
        """Embeddings whose vector widths match the model's encoders (others are skipped, as A1111),
        and the damaged files (``error`` set, no vectors)."""
        found: dict[str, Embedding] = {}
        for path in self._files():
            try:
                mtime = path.stat().st_mtime
            except OSError:  # removed since listed
                continue
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                try:
                    vectors: dict[str, torch.Tensor] | str = read_embedding_file(path)
                except ValueError as exc:
                    log.warning("skipping damaged embedding file %s: %s", path, exc)
                    vectors = str(exc)
                self._cache[path] = cached = (mtime, vectors)
            vectors = cached[1]
            if isinstance(vectors, str):
                found[path.stem] = Embedding(name=path.stem, vectors={}, path=path, error=vectors)
                continue
            if set(vectors) != set(widths) or any(vectors[k].shape[1] != w for k, w in widths.items()):
                continue
            found[path.stem] = Embedding(name=path.stem, vectors=vectors, path=path)  # a later file replaces
        return found


# --- the encoder -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _EncoderSpec:
    module: torch.nn.Module
    key: str  # "clip_l" | "clip_g": which embedding vectors it takes
    pad_zero: bool  # ids after the first end token become 0 (OpenCLIP)
    layer: str  # "skip" (SD1, CLIP skip honoured) | "last" | "penultimate" (no final norm)
    pooled: bool = False
    clean: str = "clip"  # the text clean-up of A1111's tokenizer for it (core.prompt.tokens.CLEAN_STYLES)


def _final_layer_norm(module):
    return getattr(module, "text_model", module).final_layer_norm


def _token_embedding(module):
    return getattr(module, "text_model", module).embeddings.token_embedding


class PromptEncoder:
    """Encodes scheduled texts for one loaded model, A1111-style."""

    def __init__(
        self,
        kind: str,
        text_encoder: torch.nn.Module,
        text_encoder_2: torch.nn.Module | None = None,
        *,
        emphasis: str = "Original",
        comma_padding_backtrack: int = 20,
        clip_skip: int = 1,
        embeddings: Mapping[str, Embedding] | None = None,
    ) -> None:
        if emphasis not in EMPHASIS_MODES:
            raise GenerationError(
                f"unknown emphasis mode {emphasis!r} (use one of {', '.join(EMPHASIS_MODES)})"
            )
        if kind == "sdxl":
            if text_encoder_2 is None:
                raise ValueError("SDXL needs two text encoders")
            self.encoders = [
                _EncoderSpec(text_encoder, "clip_l", pad_zero=False, layer="penultimate"),
                _EncoderSpec(
                    text_encoder_2,
                    "clip_g",
                    pad_zero=True,
                    layer="penultimate",
                    pooled=True,
                    clean="open_clip",
                ),
            ]
        elif kind == "sd2":
            self.encoders = [
                _EncoderSpec(text_encoder, "clip_l", pad_zero=True, layer="last", clean="open_clip")
            ]
        else:
            self.encoders = [_EncoderSpec(text_encoder, "clip_l", pad_zero=False, layer="skip")]
        layers = text_encoder.config.num_hidden_layers
        if clip_skip < 1 or (kind == "sd1" and clip_skip > layers):
            raise GenerationError(f"CLIP skip must be between 1 and {layers} for this model, not {clip_skip}")
        self.kind = kind
        self.emphasis = emphasis
        self.comma_padding_backtrack = comma_padding_backtrack
        self.clip_skip = clip_skip
        self.embeddings = dict(embeddings or {})
        # A1111's "TI hashes": each encode call (per encoder) puts the embeddings it used in front.
        self.ti_hashes: list[str] = []
        first = next(text_encoder.parameters())
        self.device, self.dtype = first.device, first.dtype

    @staticmethod
    def widths(kind: str, text_encoder, text_encoder_2=None) -> dict[str, int]:
        widths = {"clip_l": text_encoder.config.hidden_size}
        if kind == "sdxl" and text_encoder_2 is not None:
            widths["clip_g"] = text_encoder_2.config.hidden_size
        return widths

    # 1. tokens
    def tokenize(self, texts: Sequence[str], clean: str = "clip"):
        from core.prompt.tokens import tokenize_text

        counts = {name: emb.count for name, emb in self.embeddings.items()}
        tokenized = [
            tokenize_text(
                text,
                embeddings=counts,
                emphasis=self.emphasis,
                comma_padding_backtrack=self.comma_padding_backtrack,
                clean=clean,
            )
            for text in texts
        ]
        for fix in (fix for t in tokenized for chunk in t.chunks for fix in chunk.fixes):
            error = self.embeddings[fix.name].error
            if error is not None:
                raise GenerationError(f"the embedding {fix.name!r} in this prompt is damaged: {error}")
        return tokenized

    def _note_embeddings(self, tokenized) -> None:
        """A1111 (``TextConditionalModel.forward``): the embeddings one call used, chunk by chunk,
        each once, go in front of those noted before (SDXL: once per encoder)."""
        used: dict[str, Embedding] = {}
        for c in range(max(len(t.chunks) for t in tokenized)):
            for t in tokenized:
                for fix in t.chunks[c].fixes if c < len(t.chunks) else ():
                    used.setdefault(fix.name, self.embeddings[fix.name])
        noted = [f"{name.translate(_NAME_SYMBOLS)}: {h}" for name, e in used.items() if (h := e.short_hash())]
        self.ti_hashes[:0] = noted

    def ti_hashes_infotext(self) -> dict[str, str]:
        """``{"TI hashes": "name: 0123456789ab, ..."}`` for the embeddings encoded so far, or {}."""
        return {"TI hashes": ", ".join(self.ti_hashes)} if self.ti_hashes else {}

    # 2. tensors
    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> list[Cond]:
        """Encode ``texts`` together, as one A1111 batch (emphasis means are shared across it)."""
        # Each encoder's own tokenizer (SDXL: CLIP-L's and OpenCLIP-G's clean-ups differ on HTML entities).
        tokenized = {spec.clean: self.tokenize(texts, spec.clean) for spec in self.encoders}
        lengths = {max(len(t.chunks) for t in tok) for tok in tokenized.values()}
        if len(lengths) > 1:  # A1111 cannot concatenate the two encoders' outputs either
            raise GenerationError(
                "this prompt has a different length for SDXL's two tokenizers (an HTML entity such as "
                "&amp; next to '<'?); write the character itself"
            )
        n_chunks = lengths.pop()
        pieces: list[torch.Tensor] = []
        pooled: torch.Tensor | None = None
        for spec in self.encoders:
            self._note_embeddings(tokenized[spec.clean])
        for c in range(n_chunks):
            outputs = []
            for spec in self.encoders:
                ids, multipliers, fixes = self._chunk_batch(tokenized[spec.clean], c)
                z, pool = self._run_encoder(spec, ids, fixes)
                outputs.append(self._apply_emphasis(z, multipliers))
                if c == 0 and pool is not None:
                    pooled = pool
            pieces.append(torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0])
        embeds = torch.cat(pieces, dim=1).to(self.dtype)
        return [Cond(embeds[i], None if pooled is None else pooled[i]) for i in range(len(texts))]

    def _chunk_batch(self, tokenized, c: int):
        """Chunk ``c`` of every text (an empty chunk where a text has fewer): ids, multipliers, fixes."""
        empty = ((BOS,) + (EOS,) * 76, (1.0,) * 77, ())
        rows = [
            (t.chunks[c].tokens, t.chunks[c].multipliers, t.chunks[c].fixes) if c < len(t.chunks) else empty
            for t in tokenized
        ]
        ids = torch.tensor([r[0] for r in rows], dtype=torch.long, device=self.device)
        # float32 as in A1111 (a half-precision encoder output is promoted for the emphasis maths)
        multipliers = torch.tensor([r[1] for r in rows], dtype=torch.float32, device=self.device)
        return ids, multipliers, [r[2] for r in rows]

    def zeros(self) -> Cond:
        """SDXL's conditioning for an empty negative prompt (A1111 ``force_zero_negative_prompt``)."""
        cond = self.encode([""])[0]
        return Cond(
            torch.zeros_like(cond.embeds), None if cond.pooled is None else torch.zeros_like(cond.pooled)
        )

    def _run_encoder(
        self, spec: _EncoderSpec, ids: torch.Tensor, fixes
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if spec.pad_zero:
            ids = ids.clone()
            for row in range(ids.shape[0]):
                ends = (ids[row] == EOS).nonzero()
                if len(ends):
                    ids[row, int(ends[0]) + 1 :] = 0
        with self._fixes_hook(spec, fixes):
            out = spec.module(input_ids=ids, output_hidden_states=True)
        if spec.layer == "penultimate":
            z = out.hidden_states[-2]
        elif spec.layer == "last" or self.clip_skip <= 1:
            z = out.last_hidden_state
        else:
            z = _final_layer_norm(spec.module)(out.hidden_states[-self.clip_skip])
        pooled = out.text_embeds if spec.pooled else None
        return z, pooled

    @contextlib.contextmanager
    def _fixes_hook(self, spec: _EncoderSpec, fixes) -> Iterator[None]:
        if not any(fixes):
            yield
            return

        def hook(module, inputs, output):
            output = output.clone()
            for row, row_fixes in enumerate(fixes):
                for fix in row_fixes:
                    vectors = self.embeddings[fix.name].vectors[spec.key].to(output)
                    count = min(output.shape[1] - fix.offset - 1, vectors.shape[0])
                    if count <= 0:
                        continue
                    output[row, fix.offset + 1 : fix.offset + 1 + count] = vectors[:count]
            return output

        handle = _token_embedding(spec.module).register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def _apply_emphasis(self, z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
        if self.emphasis in ("Ignore", "None"):
            return z
        scaled = z * multipliers.reshape((*multipliers.shape, 1)).expand(z.shape)
        if self.emphasis == "No norm":
            return scaled
        original_mean = z.mean()
        new_mean = scaled.mean()
        if new_mean == 0:  # A1111 would divide by zero and yield a NaN (black) image: leave it unscaled
            return scaled
        return scaled * (original_mean / new_mean)


def stack_conds(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """[n, tokens, channels]; shorter ones repeat their last token vector (A1111 ``stack_conds``)."""
    longest = max(t.shape[0] for t in tensors)
    padded = [
        t if t.shape[0] == longest else torch.cat([t, t[-1:].repeat(longest - t.shape[0], 1)])
        for t in tensors
    ]
    return torch.stack(padded)


# --- a whole prompt's schedule ----------------------------------------------------------------------


@dataclass
class ScheduledPart:
    """One ``AND`` part (or the negative prompt): its conditioning for each schedule entry."""

    weight: float
    until_steps: tuple[int, ...]
    conds: tuple[Cond, ...]

    def at(self, counter: int) -> Cond:
        """A1111: the first entry whose end step is >= the 0-based counter (the last otherwise)."""
        for until, cond in zip(self.until_steps, self.conds, strict=True):
            if until >= counter:
                return cond
        return self.conds[-1]


def encode_interpretation(
    encoder: PromptEncoder, interpretation, *, zero_if_empty: bool = False
) -> list[ScheduledPart]:
    """Encode every sub-prompt of a ``core.prompt`` interpretation; each part's texts as one batch.

    Identical parts share one encoding (A1111 caches by text). ``zero_if_empty``: SDXL's all-empty
    negative prompt becomes zeros.
    """
    cache: dict[tuple[str, ...], tuple[Cond, ...]] = {}
    parts = []
    for sub in interpretation.subprompts:
        texts = tuple(entry.text for entry in sub.schedule)
        if texts not in cache:
            if zero_if_empty and all(t == "" for t in texts):
                cache[texts] = (encoder.zeros(),) * len(texts)
            else:
                cache[texts] = tuple(encoder.encode(texts))
        parts.append(
            ScheduledPart(
                weight=float(sub.weight),
                until_steps=tuple(entry.until_step for entry in sub.schedule),
                conds=cache[texts],
            )
        )
    return parts
