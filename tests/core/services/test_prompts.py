"""Dynamic prompts and wildcards in the submit use case (the real service): expanded with the job's seed
before the A1111 parser, the expansion stored as the request and the template next to it; errors for
a missing wildcard, a cycle, the length limit and banned words in the expansion; what 🔁, Vary and
Remix do with them; and tag autocomplete from ``prompts.tag_file``."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from core.config import PromptSettings
from core.prompt.dynamic import expand
from core.prompt.wildcards import WildcardLibrary
from core.services import ImagineOptions, JobDone, UserError
from tests.core.services.conftest import Harness, actor, wait_for

TEMPLATE = "a {red|green|blue|golden} __animal__ in {fog|rain|snow}"


def wildcard_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "animal.txt").write_text("cat\ndog\nfox\nowl\n# a comment\nhare\n", encoding="utf-8")
    (folder / "loop_a.txt").write_text("x __loop_b__\n", encoding="utf-8")
    (folder / "loop_b.txt").write_text("y __loop_a__\n", encoding="utf-8")
    (folder / "sea.txt").write_text("a calm sea\na kraken rising\n", encoding="utf-8")
    (folder / "long.txt").write_text("w" * 150 + "\n", encoding="utf-8")
    return folder


@pytest.fixture
async def setup(tmp_path):
    h = Harness(tmp_path, max_prompt_chars=200, max_queued_per_user=50, max_queued_per_guild=100)
    folder = wildcard_dir(tmp_path)
    h.settings = dataclasses.replace(h.settings, prompts=PromptSettings(wildcard_dir=str(folder)))
    service = await h.open()
    yield h, service, WildcardLibrary(folder)
    await h.close()


async def done(service, receipt) -> JobDone:
    events = service.events()
    return await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == receipt.job_id)


async def test_the_same_seed_expands_the_same_way_and_the_template_is_kept(setup) -> None:
    _, service, library = setup
    a = actor()
    first = await service.submit_imagine(
        a, ImagineOptions(prompt=TEMPLATE, seed=5, steps=2, negative="{ugly|bad}")
    )
    again = await service.submit_imagine(
        a, ImagineOptions(prompt=TEMPLATE, seed=5, steps=2, negative="{ugly|bad}")
    )
    one, two = (await service.show(a, first.job_id)), (await service.show(a, again.job_id))
    assert one.request.prompt == two.request.prompt == expand(TEMPLATE, 5, wildcards=library).text
    assert "{" not in one.request.prompt and "__" not in one.request.prompt
    assert one.request.negative_prompt in ("ugly", "bad")
    assert one.prompt_templates == {
        "prompt": TEMPLATE,
        "negative_prompt": "{ugly|bad}",
        "wildcards": ["animal"],
    }
    drawn = set()
    for seed in range(6):
        receipt = await service.submit_imagine(a, ImagineOptions(prompt=TEMPLATE, seed=seed, steps=2))
        drawn.add((await service.show(a, receipt.job_id)).request.prompt)
    assert len(drawn) > 1  # other seeds draw other prompts


async def test_reroll_draws_again_with_its_new_seed_vary_keeps_the_expansion_remix_edits_the_template(
    setup,
) -> None:
    _, service, library = setup
    a = actor()
    original = await done(
        service, await service.submit_imagine(a, ImagineOptions(prompt=TEMPLATE, seed=9, steps=2))
    )
    reroll = await service.show(a, (await service.reroll_job(a, original.job.id)).job_id)
    assert reroll.request.seed != 9
    assert reroll.request.prompt == expand(TEMPLATE, reroll.request.seed, wildcards=library).text
    assert reroll.prompt_templates["prompt"] == TEMPLATE
    vary = await service.show(a, (await service.vary(a, original.job.id, 0, "subtle")).job_id)
    assert vary.request.prompt == original.job.request.prompt and vary.prompt_templates["prompt"] == TEMPLATE
    form = await service.remix_form(a, original.job.id, 0)
    assert (form.prompt, form.seed) == (TEMPLATE, 9)
    remix = await service.remix(a, original.job.id, 0, prompt="a __animal__ at dawn", negative="", seed=9)
    view = await service.show(a, remix.job_id)
    assert view.request.prompt == expand("a __animal__ at dawn", 9, wildcards=library).text


async def test_a_missing_wildcard_is_named_with_the_closest_names(setup) -> None:
    _, service, _ = setup
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(), ImagineOptions(prompt="a __animl__ in fog"))
    assert err.value.code == "wildcard" and "'animl'" in str(err.value) and "`__animal__`" in str(err.value)
    assert err.value.column == 3


async def test_a_wildcard_cycle_is_an_error_not_a_hang(setup) -> None:
    _, service, _ = setup
    with pytest.raises(UserError) as err:
        await service.submit_imagine(actor(), ImagineOptions(prompt="start __loop_a__"))
    assert "cycle" in str(err.value) and "__loop_a__ → __loop_b__" in str(err.value)


async def test_the_expansion_counts_against_the_length_limit_and_banned_words_apply_to_it(setup) -> None:
    _, service, _ = setup
    with pytest.raises(UserError) as err:  # 20 characters typed, 150 + 150 after expansion; the limit is 200
        await service.submit_imagine(actor(), ImagineOptions(prompt="__long__, __long__"))
    assert "limit is 200" in str(err.value)
    await service.admin_banned_words(actor(manage_guild=True), add=["kraken"])
    refused = 0
    for seed in range(8):  # the file holds "a calm sea" and "a kraken rising": some seeds draw the kraken
        try:
            await service.submit_imagine(actor(), ImagineOptions(prompt="__sea__", seed=seed, steps=2))
        except UserError as exc:
            assert exc.code == "banned_word" and "kraken" in str(exc)
            refused += 1
    assert 0 < refused < 8


async def test_with_dynamic_prompts_off_braces_are_text(tmp_path) -> None:
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(h.settings, prompts=PromptSettings(dynamic=False))
    service = await h.open(start=False)
    try:
        receipt = await service.submit_imagine(
            actor(), ImagineOptions(prompt="a {red|blue} __x__ cat", seed=1)
        )
        view = await service.show(actor(), receipt.job_id)
        assert view.request.prompt == "a {red|blue} __x__ cat" and view.prompt_templates is None
    finally:
        await h.close()


async def test_tag_autocomplete_from_the_tag_file(tmp_path) -> None:
    tags = tmp_path / "tags.csv"
    tags.write_text("long_hair,0,900,\nlooking_at_viewer,0,800,\nsolo,0,950,alone\n", encoding="utf-8")
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(h.settings, prompts=PromptSettings(tag_file=str(tags)))
    service = await h.open(worker=False)
    try:
        for _ in range(200):  # built in a thread when the service starts
            if service.complete_prompt("lo"):
                break
            await asyncio.sleep(0.02)
        values = [value for _, value in service.complete_prompt("1girl, lo")]
        assert values == ["1girl, long hair, ", "1girl, looking at viewer, "]
        assert [v for _, v in service.complete_prompt("alo")] == ["solo, "]
        assert service.complete_prompt("x" * 120 + ", lo") == []  # Discord allows 100 characters a value
    finally:
        await h.close()


async def test_a_tag_file_that_is_not_there_stops_chant_at_start(tmp_path) -> None:
    from core.types import GenerationError

    h = Harness(tmp_path)
    h.settings = dataclasses.replace(h.settings, prompts=PromptSettings(tag_file=str(tmp_path / "nope.csv")))
    with pytest.raises(GenerationError, match=r"prompts\.tag_file: there is no file"):
        await h.open(worker=False)
    await h.close()
