"""Test fixtures shared by tests and benchmarks (the fake engine, tiny models); only ``core.bootstrap`` picks one in a running chant (``CHANT_FAKE_ENGINE=1``)."""
