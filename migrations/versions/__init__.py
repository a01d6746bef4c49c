# A package only so the wheel carries it; Alembic skips __init__.py when it reads revisions.
