"""The engine tests' fixture that keeps skeletons and hashes in a temporary folder applies here too."""

from tests.core.engine.conftest import _engine_cache  # noqa: F401
