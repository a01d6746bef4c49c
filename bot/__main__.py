"""``python -m bot …`` is the ``chant`` command (``python -m bot run`` starts the bot)."""

import sys

from bot.cli import main

sys.exit(main())
