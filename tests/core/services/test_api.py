"""The seam: ChantService is what the bot's CoreAPI protocol says, method for method."""

from __future__ import annotations

import inspect

from core.services import ChantService
from core.services.api import CoreAPI


def _methods(cls: type) -> dict[str, object]:
    return {
        name: member for name, member in vars(cls).items() if callable(member) and not name.startswith("_")
    }


def test_chant_service_implements_the_protocol_with_the_same_signatures() -> None:
    seam = _methods(CoreAPI)
    assert {"submit_imagine", "events", "admin_stats", "live_status_jobs"} <= set(seam)
    for name, declared in seam.items():
        implemented = getattr(ChantService, name, None)
        assert implemented is not None, f"ChantService lacks {name}"
        assert inspect.signature(implemented) == inspect.signature(declared), name
        assert inspect.iscoroutinefunction(implemented) == inspect.iscoroutinefunction(declared), name


def test_everything_the_service_offers_the_bot_is_in_the_protocol() -> None:
    offered = {name for name in _methods(ChantService) if not name.startswith("_")}
    # (settings, db and worker are properties, for benchmarks and tests)
    assert offered == set(_methods(CoreAPI))
