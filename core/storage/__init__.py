"""chant's storage: SQLAlchemy 2 models, async sessions, repositories, Alembic migrations, backup.

* :mod:`core.storage.models`: the tables (``Base.metadata``).
* :mod:`core.storage.db`: :class:`~core.storage.db.Database` (engine + session factories).
* :mod:`core.storage.repositories`: :class:`~core.storage.repositories.Repositories` over one
  session (guilds, presets, jobs, quotas, audit); they never commit.
* :mod:`core.storage.migrate`: upgrade / downgrade / check in-process; ``chant db …``.
* :mod:`core.storage.backup`: consistent SQLite copies while the bot runs.
"""
