"""Benchmarks that print figures (``chant bench TARGET``): they sit on top of the domains they measure."""
