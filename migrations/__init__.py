"""chant's Alembic migrations, shipped in the wheel as a package (``env.py``, ``script.py.mako``,
``versions/``) and found by ``core.storage.migrate`` through ``importlib.resources``, so ``chant db``
works from an installed wheel as well as from a checkout."""
