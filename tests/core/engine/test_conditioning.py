"""A1111's prompt encoder on the tiny models' real (random-weight) CLIP encoders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.engine.conditioning import (
    Embedding,
    EmbeddingLibrary,
    PromptEncoder,
    read_embedding_file,
    stack_conds,
)
from core.prompt.tokens import ClipTokenizer
from core.types import GenerationError


@pytest.fixture(scope="module")
def sd1(tiny_sd15):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(tiny_sd15.folder / "text_encoder", local_files_only=True).eval()


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    one = CLIPTextModel.from_pretrained(tiny_sdxl.folder / "text_encoder", local_files_only=True).eval()
    two = CLIPTextModelWithProjection.from_pretrained(
        tiny_sdxl.folder / "text_encoder_2", local_files_only=True
    )
    return one, two.eval()


def ids(text: str) -> list[int]:
    return ClipTokenizer.default().encode(text)


def test_plain_text_equals_the_encoder_on_padded_ids(sd1) -> None:
    cond = PromptEncoder("sd1", sd1).encode(["a photo of a cat"])[0]
    tokens = [49406, *ids("a photo of a cat"), 49407]
    tokens += [49407] * (77 - len(tokens))
    with torch.no_grad():
        expected = sd1(input_ids=torch.tensor([tokens])).last_hidden_state[0]
    assert torch.equal(cond.embeds, expected)


def test_long_prompts_and_break_concatenate_77_token_chunks(sd1) -> None:
    encoder = PromptEncoder("sd1", sd1)
    long_text = " ".join(["apple"] * 150)
    assert len(ids(long_text)) == 150
    assert encoder.encode([long_text])[0].embeds.shape == (154, 32)
    assert encoder.encode(["a BREAK b"])[0].embeds.shape == (154, 32)
    short, long_ = encoder.encode(["a cat", long_text])  # one batch: the short one gets an empty chunk
    assert short.embeds.shape == long_.embeds.shape == (154, 32)
    alone = encoder.encode(["a cat"])[0]
    assert torch.equal(short.embeds[:77], alone.embeds)


def test_emphasis_modes(sd1) -> None:
    plain = PromptEncoder("sd1", sd1).encode(["a cat"])[0].embeds
    original = PromptEncoder("sd1", sd1).encode(["a (cat:1.5)"])[0].embeds
    no_norm = PromptEncoder("sd1", sd1, emphasis="No norm").encode(["a (cat:1.5)"])[0].embeds
    ignore = PromptEncoder("sd1", sd1, emphasis="Ignore").encode(["a (cat:1.5)"])[0].embeds
    none = PromptEncoder("sd1", sd1, emphasis="None").encode(["a (cat:1.5)"])[0].embeds
    assert torch.equal(ignore, plain)
    # No norm: the "cat" row (position 2) is scaled by 1.5, the rest unchanged.
    assert torch.allclose(no_norm[2], plain[2] * 1.5) and torch.equal(no_norm[1], plain[1])
    # Original: the same, then the whole tensor rescaled so its mean is the unweighted mean.
    assert torch.allclose(original.mean(), plain.mean(), atol=1e-6)
    assert torch.allclose(original, no_norm * (plain.mean() / no_norm.mean()))
    assert not torch.equal(none, plain)  # brackets are literal text with emphasis "None"
    with pytest.raises(GenerationError, match="emphasis"):
        PromptEncoder("sd1", sd1, emphasis="Loud")


def test_mean_restoration_is_shared_across_one_encode_batch(sd1) -> None:
    encoder = PromptEncoder("sd1", sd1)
    together = encoder.encode(["(cat:1.5)", "dog"])[1].embeds
    alone = encoder.encode(["dog"])[0].embeds
    assert not torch.equal(together, alone)  # A1111 §8.1: [(cat:1.5):dog:5] changes "dog"


def test_clip_skip_uses_the_final_layer_norm_on_earlier_layers(sd1) -> None:
    tokens = torch.tensor([[49406, *ids("a cat"), *[49407] * 74]])
    with torch.no_grad():
        out = sd1(input_ids=tokens, output_hidden_states=True)
        expected = sd1.final_layer_norm(out.hidden_states[-2])[0]
    skip2 = PromptEncoder("sd1", sd1, clip_skip=2).encode(["a cat"])[0].embeds
    assert torch.allclose(skip2, expected)
    assert not torch.allclose(skip2, PromptEncoder("sd1", sd1).encode(["a cat"])[0].embeds)
    with pytest.raises(GenerationError, match="CLIP skip"):
        PromptEncoder("sd1", sd1, clip_skip=4)


def test_sdxl_concatenates_both_encoders_and_pools_the_first_chunk(sdxl) -> None:
    one, two = sdxl
    encoder = PromptEncoder("sdxl", one, two)
    cond = encoder.encode(["a castle BREAK a moat"])[0]
    assert cond.embeds.shape == (154, 32 + 64) and cond.pooled.shape == (32,)
    first = [49406, *ids("a castle"), 49407]
    with torch.no_grad():
        l_out = one(input_ids=torch.tensor([first + [49407] * (77 - len(first))]), output_hidden_states=True)
        g_out = two(input_ids=torch.tensor([first + [0] * (77 - len(first))]), output_hidden_states=True)
    assert torch.equal(cond.embeds[:77, :32], l_out.hidden_states[-2][0])  # penultimate, no final norm
    assert torch.equal(cond.embeds[:77, 32:], g_out.hidden_states[-2][0])  # G pads with 0 after EOS
    assert torch.equal(cond.pooled, g_out.text_embeds[0])
    zeros = encoder.zeros()
    assert zeros.embeds.abs().sum() == 0 and zeros.pooled.abs().sum() == 0


def test_sdxl_encoders_get_their_own_tokenizer_clean_up(sdxl) -> None:
    # ftfy keeps "&amp;" in text with a "<" (it looks like HTML); only open_clip (OpenCLIP-G) unescapes it.
    one, two = sdxl
    text = "a <3 &amp; b"
    l_ids = ClipTokenizer.default().encode(text, "clip")
    g_ids = ClipTokenizer.default().encode(text, "open_clip")
    assert len(l_ids) == len(g_ids) + 2  # "&", "amp", ";" against "&"
    cond = PromptEncoder("sdxl", one, two).encode([text])[0]
    l_row, g_row = [49406, *l_ids, 49407], [49406, *g_ids, 49407]
    with torch.no_grad():
        l_out = one(input_ids=torch.tensor([l_row + [49407] * (77 - len(l_row))]), output_hidden_states=True)
        g_out = two(input_ids=torch.tensor([g_row + [0] * (77 - len(g_row))]), output_hidden_states=True)
    assert torch.equal(cond.embeds[:, :32], l_out.hidden_states[-2][0])
    assert torch.equal(cond.embeds[:, 32:], g_out.hidden_states[-2][0])
    # Pasted punctuation is cleaned for both: a curly apostrophe encodes as the typed one.
    encoder = PromptEncoder("sdxl", one, two)
    assert torch.equal(encoder.encode(["don’t ﬁne"])[0].embeds, encoder.encode(["don't fine"])[0].embeds)


def test_sdxl_refuses_a_prompt_its_two_tokenizers_chunk_differently(sdxl) -> None:
    one, two = sdxl
    text = "a <3 " + "&amp; " * 30  # 92 tokens for CLIP-L (2 chunks), 32 for OpenCLIP-G (1 chunk)
    with pytest.raises(GenerationError, match="two tokenizers"):
        PromptEncoder("sdxl", one, two).encode([text])


def test_stack_conds_repeats_the_last_token_vector() -> None:
    a, b = torch.randn(77, 4), torch.randn(154, 4)
    stacked = stack_conds([a, b])
    assert stacked.shape == (2, 154, 4)
    assert torch.equal(stacked[0, :77], a) and torch.equal(stacked[0, 100], a[-1])


def test_textual_inversion_vectors_replace_the_placeholders(sd1, tmp_path: Path) -> None:
    cat = sd1.embeddings.token_embedding.weight[ids("cat")[0]].detach().clone()
    red = sd1.embeddings.token_embedding.weight[ids("red")[0]].detach().clone()
    torch.save({"string_to_param": {"*": torch.stack([red, cat])}, "name": "redcat"}, tmp_path / "redcat.pt")
    from safetensors.torch import save_file

    save_file({"emb_params": cat[None]}, str(tmp_path / "kitty.safetensors"))
    save_file({"emb_params": torch.zeros(1, 99)}, str(tmp_path / "wrongwidth.safetensors"))
    library = EmbeddingLibrary([tmp_path])
    found = library.for_widths({"clip_l": 32})
    assert set(found) == {"redcat", "kitty"} and found["redcat"].count == 2
    encoder = PromptEncoder("sd1", sd1, embeddings=found)
    with_embedding = encoder.encode(["a redcat on a kitty"])[0].embeds
    with_words = PromptEncoder("sd1", sd1).encode(["a red cat on a cat"])[0].embeds
    assert torch.allclose(with_embedding, with_words, atol=1e-6)


def test_embedding_files_in_unknown_layouts_are_refused(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="weights_only"):
        read_embedding_file(tmp_path / "bad.pt")
    torch.save({"a": torch.zeros(2), "b": torch.zeros(2)}, tmp_path / "two.bin")
    with pytest.raises(ValueError, match="unknown embedding layout"):
        read_embedding_file(tmp_path / "two.bin")
    from safetensors.torch import save_file

    save_file({"clip_l": torch.zeros(2, 32), "clip_g": torch.zeros(2, 64)}, str(tmp_path / "xl.safetensors"))
    vectors = read_embedding_file(tmp_path / "xl.safetensors")
    assert set(vectors) == {"clip_l", "clip_g"}
    assert Embedding("xl", vectors).count == 2


def _sha12(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_ti_hashes_as_a1111_writes_them(sd1, sdxl, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    for name, width in (("good", 32), ("bad,name", 32), ("xl", None)):
        vectors = {"emb_params": torch.randn(2, width)} if width else {}
        if not width:
            vectors = {"clip_l": torch.randn(1, 32), "clip_g": torch.randn(1, 64)}
        save_file(vectors, str(tmp_path / f"{name}.safetensors"))
    library = EmbeddingLibrary([tmp_path])
    encoder = PromptEncoder("sd1", sd1, embeddings=library.for_widths({"clip_l": 32}))
    encoder.encode(["blurry, bad,name"])  # A1111 encodes the negative prompt first
    encoder.encode(["a good cat BREAK good", "plain"])
    good, bad = _sha12(tmp_path / "good.safetensors"), _sha12(tmp_path / "bad,name.safetensors")
    # each call's embeddings go in front; ":" and "," leave the names
    assert encoder.ti_hashes_infotext() == {"TI hashes": f"good: {good}, badname: {bad}"}
    assert PromptEncoder("sd1", sd1).ti_hashes_infotext() == {}
    one, two = sdxl
    xl = PromptEncoder("sdxl", one, two, embeddings=library.for_widths({"clip_l": 32, "clip_g": 64}))
    xl.encode(["an xl photo"])  # both encoders report it, as in A1111
    xl_hash = _sha12(tmp_path / "xl.safetensors")
    assert xl.ti_hashes_infotext() == {"TI hashes": f"xl: {xl_hash}, xl: {xl_hash}"}


def _damaged_files(folder: Path) -> None:
    from safetensors.torch import save_file

    save_file({"emb_params": torch.randn(1, 32)}, str(folder / "whole.safetensors"))
    data = (folder / "whole.safetensors").read_bytes()
    (folder / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (folder / "garbage.safetensors").write_bytes(b"\xff" * 64)
    (folder / "empty.safetensors").write_bytes(b"")
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, folder / "whole_pt.pt")
    pt = (folder / "whole_pt.pt").read_bytes()
    (folder / "truncated_pt.pt").write_bytes(pt[: len(pt) // 2])
    (folder / "garbage_pt.pt").write_bytes(b"PK\x03\x04 not really a zip")
    torch.save({"string_to_param": {"*": "not a tensor"}}, folder / "wrong_pt.pt")
    save_file({"clip_l": torch.randn(3), "clip_g": torch.randn(1, 64)}, str(folder / "flat_xl.safetensors"))


DAMAGED = ["truncated", "garbage", "empty", "truncated_pt", "garbage_pt", "wrong_pt", "flat_xl"]


def test_damaged_embedding_files_are_skipped_and_named_when_used(sd1, tmp_path: Path, caplog) -> None:
    _damaged_files(tmp_path)
    with caplog.at_level("WARNING"):
        found = EmbeddingLibrary([tmp_path]).for_widths({"clip_l": 32})
    assert {n for n, e in found.items() if e.error is None} == {"whole", "whole_pt"}
    assert {n for n, e in found.items() if e.error is not None} == set(DAMAGED)
    assert all(f"{n}." in caplog.text for n in DAMAGED)  # logged with the file
    encoder = PromptEncoder("sd1", sd1, embeddings=found)
    plain = encoder.encode(["a whole cat on a mat"])[0].embeds  # unrelated prompts are unaffected
    assert torch.isfinite(plain).all()
    for name in DAMAGED:
        with pytest.raises(GenerationError, match=rf"embedding '{name}' in this prompt is damaged: {name}\."):
            encoder.encode([f"a cat, {name}"])
