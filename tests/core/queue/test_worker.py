"""The worker loop on SQLite with the fake engine: fair order end to end, batching, shutdown."""

from __future__ import annotations

from core.services import ImagineOptions, JobDone, JobQueued
from tests.core.services.conftest import Harness, actor, wait_for


async def test_three_guilds_flooding_are_served_interleaved(tmp_path) -> None:
    h = Harness(tmp_path, max_queued_per_user=30, max_queued_per_guild=50)
    service = await h.open(start=False)
    guild_of = {}
    for guild, n in ((1, 30), (2, 10), (3, 2)):
        for i in range(n):
            r = await service.submit_imagine(
                actor(user=guild * 100 + i % 3, guild=guild), ImagineOptions(prompt="x", steps=1)
            )
            guild_of[r.job_id] = guild
    events = service.events()
    await service.start()
    done = 0
    while done < 42:
        await wait_for(events, lambda e: isinstance(e, JobDone))
        done += 1
    served = [guild_of[j] for j in service.worker.served]
    assert [i + 1 for i, g in enumerate(served) if g == 3] == [3, 6]
    assert served[:6] == [1, 2, 3, 1, 2, 3]
    await h.close()


async def test_compatible_jobs_at_the_front_share_one_engine_call(tmp_path) -> None:
    h = Harness(tmp_path)
    service = await h.open(start=False)
    for guild, width in ((1, 512), (2, 512), (3, 768), (4, 512)):
        await service.submit_imagine(
            actor(user=guild, guild=guild), ImagineOptions(prompt="x", steps=2, width=width, seed=guild)
        )
    events = service.events()
    await service.start()
    for _ in range(4):
        await wait_for(events, lambda e: isinstance(e, JobDone))
    # guild 3's 768-wide job is third in fair order: it splits the batches, nobody is reordered
    assert h.engine.calls == [[1, 2], [3], [4]]
    await h.close()


async def test_positions_are_announced_as_the_queue_moves(tmp_path) -> None:
    h = Harness(tmp_path)
    h.engine.step_delay_s = 0.01
    service = await h.open(start=False)
    events = service.events()
    ids = []
    for user in range(3):
        r = await service.submit_imagine(
            actor(user=user + 1), ImagineOptions(prompt="x", steps=3, width=512 + 64 * user)
        )
        ids.append(r.job_id)
    await service.start()
    positions = []
    async for event in events:
        if isinstance(event, JobQueued) and event.job_id == ids[2]:
            positions.append(event.position)
        if isinstance(event, JobDone) and event.job.id == ids[2]:
            break
    assert positions[0] == 3 and positions[-1] == 1 and positions == sorted(positions, reverse=True)
    await h.close()


async def test_stopping_mid_job_puts_it_back_uncounted(tmp_path) -> None:
    h = Harness(tmp_path)
    h.engine.step_delay_s = 0.05
    service = await h.open(start=False)
    events = service.events()
    await service.start()
    r = await service.submit_imagine(actor(), ImagineOptions(prompt="x", steps=40))
    from core.services import JobProgress

    await wait_for(events, lambda e: isinstance(e, JobProgress))
    await h.close()  # graceful stop: the job goes back to the queue, its attempt not counted

    h2 = Harness(tmp_path)
    service = await h2.open(start=False)
    view = await service.show(actor(), r.job_id)
    assert view.state == "queued"
    from sqlalchemy import select

    from core.storage.models import Job

    async with h2.db.session() as s:
        assert await s.scalar(select(Job.attempts).where(Job.id == r.job_id)) == 0
    await h2.close()


async def test_operator_weight_gives_a_guild_a_bigger_share(tmp_path) -> None:
    from core.storage.repositories import Repositories

    h = Harness(tmp_path, max_queued_per_user=20, max_queued_per_guild=50)
    service = await h.open(start=False)
    async with h.db.transaction(write=True) as s:
        await Repositories(s).guilds.update(1, weight=2.0)
    guild_of = {}
    for guild in (1, 2):
        for _ in range(12):
            r = await service.submit_imagine(
                actor(user=guild, guild=guild), ImagineOptions(prompt="x", steps=1)
            )
            guild_of[r.job_id] = guild
    events = service.events()
    await service.start()
    for _ in range(24):
        await wait_for(events, lambda e: isinstance(e, JobDone))
    first9 = [guild_of[j] for j in list(service.worker.served)[:9]]
    assert first9.count(1) == 6 and first9.count(2) == 3
    await h.close()


def test_chant_queue_weight_and_status(tmp_path, monkeypatch, capsys) -> None:
    from core.cli import main

    monkeypatch.setenv("CHANT_DATABASE_URL", f"sqlite:///{tmp_path / 'q.db'}")
    monkeypatch.delenv("CHANT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["queue", "weight", "42", "3"]) == 0
    assert "weight 1 -> 3" in capsys.readouterr().out
    assert main(["queue", "weight", "42", "0"]) == 2
    assert "positive" in capsys.readouterr().out
    assert main(["queue", "status"]) == 0
    assert "jobs: none" in capsys.readouterr().out
    assert main(["worker"]) == 2  # SQLite: the worker runs inside `chant run`
    assert "PostgreSQL" in capsys.readouterr().out


def test_jobs_with_other_loras_or_eta_never_share_an_engine_call() -> None:
    from core.queue.store import batch_key
    from core.types import GenerationRequest

    plain = GenerationRequest(prompt="a cat", seed=1)
    assert batch_key(plain) == batch_key(plain.replace(prompt="a dog, (red:1.2)", seed=2, cfg_scale=3))
    with_lora = plain.replace(prompt="a cat <lora:shiny:0.8>")
    assert batch_key(with_lora) != batch_key(plain)
    assert batch_key(with_lora) == batch_key(plain.replace(prompt="<lora:shiny:0.8> a dog"))
    assert batch_key(with_lora) != batch_key(plain.replace(prompt="a cat <lora:shiny:0.5>"))
    assert batch_key(plain.replace(prompt="a cat # <lora:shiny:1> in a comment")) == batch_key(plain)
    assert batch_key(plain.replace(eta=0.5)) != batch_key(plain)
    assert batch_key(plain.replace(width=768)) != batch_key(plain)


async def test_batches_are_sized_in_images_by_the_engine(tmp_path) -> None:
    """engine.max_batch = 0: the worker asks the engine how many images fit (here 4)."""
    h = Harness(tmp_path, max_images=4)
    h.engine.capacity = 4
    assert h.settings.engine.max_batch == 0
    service = await h.open(start=False)
    for guild, count in ((1, 2), (2, 2), (3, 1), (4, 3), (5, 1)):
        await service.submit_imagine(
            actor(user=guild, guild=guild), ImagineOptions(prompt="x", steps=1, count=count, seed=guild * 10)
        )
    events = service.events()
    await service.start()
    for _ in range(5):
        await wait_for(events, lambda e: isinstance(e, JobDone))
    # jobs in fair order make 2, 2, 1, 3, 1 images: 2+2 fill the first call, 1+3 the second
    assert [len(call) for call in h.engine.calls] == [2, 2, 1]
    assert [call[0] for call in h.engine.calls] == [10, 30, 50]
    await h.close()


async def test_an_engine_that_cannot_size_a_batch_runs_one_job_per_call(tmp_path) -> None:
    class NoEstimate:
        def __init__(self, engine) -> None:
            self._engine = engine

        def batch_capacity(self, request):
            raise RuntimeError("no memory probe on this device")

        def __getattr__(self, name):
            return getattr(self._engine, name)

    h = Harness(tmp_path)
    service = await h.open(start=False, engine=NoEstimate(h.engine))
    for guild in (1, 2, 3):
        await service.submit_imagine(actor(user=guild, guild=guild), ImagineOptions(prompt="x", steps=1))
    events = service.events()
    await service.start()
    for _ in range(3):
        await wait_for(events, lambda e: isinstance(e, JobDone))
    assert [len(call) for call in h.engine.calls] == [1, 1, 1]
    await h.close()


async def test_storing_results_overlaps_the_next_engine_call(tmp_path) -> None:
    """The GPU does not wait for the database: batch 2 starts while batch 1's results are written,
    results are still stored in batch order, and stop() waits for the last ones."""
    import asyncio
    import time

    from core.services import JobDone as Done

    h = Harness(tmp_path)
    h.engine.capacity = 1
    service = await h.open(start=False)
    store = service.worker.store
    complete = store.complete
    log: list[tuple[str, int, float]] = []

    async def slow_complete(job_id, result, gpu_seconds):
        log.append(("store-start", job_id, time.monotonic()))
        await asyncio.sleep(0.3)
        ok = await complete(job_id, result, gpu_seconds)
        log.append(("store-end", job_id, time.monotonic()))
        return ok

    store.complete = slow_complete  # batches of one job: complete(), not complete_many()
    claim = store.claim

    async def recording_claim(ids, **kwargs):
        got = await claim(ids, **kwargs)
        for c in got:
            log.append(("claimed", c.job_id, time.monotonic()))
        return got

    store.claim = recording_claim
    generate_batch = h.engine.generate_batch

    def recording(requests, **kwargs):
        log.append(("engine-start", requests[0].seed, time.monotonic()))
        return generate_batch(requests, **kwargs)

    h.engine.generate_batch = recording
    ids = []
    for guild in (1, 2, 3):
        r = await service.submit_imagine(
            actor(user=guild, guild=guild), ImagineOptions(prompt="x", steps=1, seed=guild)
        )
        ids.append(r.job_id)
    events = service.events()
    await service.start()
    done = [(await wait_for(events, lambda e: isinstance(e, Done))).job.id for _ in range(2)]
    assert done == ids[:2]  # in batch order
    starts = {key: t for kind, key, t in log if kind == "engine-start"}
    first_stored = next(t for kind, key, t in log if kind == "store-end" and key == ids[0])
    assert starts[2] < first_stored  # the second engine call did not wait for the first store
    # and the first store began only once the second job was claimed (SQLite: one writer at a time)
    claimed_2 = next(t for kind, key, t in log if kind == "claimed" and key == ids[1])
    first_store_start = next(t for kind, key, t in log if kind == "store-start" and key == ids[0])
    assert claimed_2 <= first_store_start
    await h.close()  # stop waits for the third job's store
    assert [key for kind, key, _ in log if kind == "store-end"] == ids


async def test_the_worker_preloads_the_engine_before_claiming_and_survives_a_failed_preload(tmp_path) -> None:
    order: list[str] = []

    class Preloading:
        def __init__(self, engine, fail: bool) -> None:
            self._engine, self.fail = engine, fail

        def preload(self):
            order.append("preload")
            if self.fail:
                raise RuntimeError("no default model")
            return {"model": "fake"}

        def generate_batch(self, requests, **kwargs):
            order.append("generate")
            return self._engine.generate_batch(requests, **kwargs)

        def __getattr__(self, name):
            return getattr(self._engine, name)

    for fail in (False, True):
        order.clear()
        folder = tmp_path / str(fail)
        folder.mkdir()
        h = Harness(folder)
        service = await h.open(start=False, engine=Preloading(h.engine, fail))
        await service.submit_imagine(actor(), ImagineOptions(prompt="x", steps=1))
        events = service.events()
        await service.start()
        await wait_for(events, lambda e: isinstance(e, JobDone))
        assert order == ["preload", "generate"]
        await h.close()


async def test_a_batch_is_stored_in_one_transaction_and_falls_back_to_one_by_one(tmp_path) -> None:
    assert await _store_calls(tmp_path / "ok", broken=False) == ["many:3"]
    assert await _store_calls(tmp_path / "broken", broken=True) == ["many:3", "one", "one", "one"]


async def _store_calls(folder, *, broken: bool) -> list[str]:
    folder.mkdir()
    h = Harness(folder)
    service = await h.open(start=False)
    store = service.worker.store
    calls: list[str] = []
    many, one = store.complete_many, store.complete

    async def complete_many(items):
        calls.append(f"many:{len(items)}")
        if broken:
            raise RuntimeError("disk full")
        return await many(items)

    async def complete(job_id, result, gpu_seconds):
        calls.append("one")
        return await one(job_id, result, gpu_seconds)

    store.complete_many, store.complete = complete_many, complete
    for guild in (1, 2, 3):
        await service.submit_imagine(actor(user=guild, guild=guild), ImagineOptions(prompt="x", steps=1))
    events = service.events()
    await service.start()
    done = [await wait_for(events, lambda e: isinstance(e, JobDone)) for _ in range(3)]
    assert all(len(event.images) == 1 for event in done)
    await h.close()
    return calls


async def test_a_job_whose_image_comes_out_nan_fails_alone_and_is_refunded(tmp_path) -> None:
    """The real engine on the tiny model: a LoRA with NaN weights turns the UNet's output NaN. That job
    fails with a message naming the likely cause, its quota is refunded, and the next job finishes."""
    import dataclasses

    import torch
    from safetensors.torch import save_file

    from core.engine.diffusers_engine import DiffusersEngine
    from core.services import JobFailed
    from core.testing.tiny import build_tiny_sd15
    from tests.core.engine.conftest import engine_settings

    loras = tmp_path / "loras"
    loras.mkdir()
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file(
        {f"{name}.lora_down.weight": torch.full((4, 32), float("nan")),
         f"{name}.lora_up.weight": torch.ones(32, 4), f"{name}.alpha": torch.tensor(4.0)},
        str(loras / "broken.safetensors"),
    )  # fmt: skip
    tiny = build_tiny_sd15(tmp_path / "model")
    engine_config = engine_settings(tiny, lora_dirs=(str(loras),))
    engine = DiffusersEngine(engine_config)
    h = Harness(tmp_path)
    h.settings = dataclasses.replace(h.settings, engine=engine_config)
    service = await h.open(start=False, engine=engine)
    admin = actor(user=1, manage_guild=True)
    await service.admin_set_quota(
        admin, scope="guild", target_id=None, images=1, gpu_seconds=None, period="day"
    )
    small = {"width": 64, "height": 64, "steps": 2, "sampler": "Euler", "seed": 1}
    bad = await service.submit_imagine(actor(user=2), ImagineOptions(prompt="a cat <lora:broken:1>", **small))
    good = await service.submit_imagine(actor(user=3), ImagineOptions(prompt="a cat", **small))
    events = service.events()
    await service.start()
    failed = await wait_for(
        events, lambda e: isinstance(e, JobFailed) and e.job.id == bad.job_id, timeout=120
    )
    assert "NaN" in failed.reason and "LoRA" in failed.reason
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == good.job_id, timeout=120)
    # the failed job's image was refunded: user 2 may generate one more today
    again = await service.submit_imagine(actor(user=2), ImagineOptions(prompt="a dog", **small))
    await wait_for(events, lambda e: isinstance(e, JobDone) and e.job.id == again.job_id, timeout=120)
    await h.close()
    engine.close()
