"""The NOTIFY wire format: every note survives the round trip; anything else is ignored, never raised."""

from __future__ import annotations

import json

import pytest

from core.queue.notify import KINDS, Note, decode, encode


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "progress"])
def test_notes_round_trip(kind: str) -> None:
    assert decode(encode(Note(kind, 42))) == Note(kind, 42)


def test_progress_carries_step_total_and_eta() -> None:
    note = Note("progress", 7, step=3, total=20, eta_s=1.5)
    assert json.loads(encode(note)) == {"t": "progress", "id": 7, "step": 3, "total": 20, "eta": 1.5}
    assert decode(encode(note)) == note
    assert decode(encode(Note("progress", 7, 3, 20, None))).eta_s is None


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "[]",
        '{"t": "done"}',
        '{"id": 3}',
        '{"t": "exploded", "id": 3}',
        '{"t": "done", "id": "x"}',
        '{"t": "progress", "id": 3, "step": 1}',
        '{"t": "progress", "id": 3, "step": 1, "total": 2, "eta": "soon"}',
    ],
)
def test_anything_else_is_ignored(payload: str) -> None:
    assert decode(payload) is None


def test_the_claim_statement_builds_a_started_note_the_decoder_reads() -> None:
    from core.queue.notify import started_sql

    # json_build_object('t', 'started', 'id', <id>)::text: the keys encode() writes, in SQL
    assert "'t', 'started'" in started_sql("jobs.id") and "'id', jobs.id" in started_sql("jobs.id")
    assert decode('{"t" : "started", "id" : 9}') == Note("started", 9)  # PostgreSQL's JSON spacing
