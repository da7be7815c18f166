"""Shared settings for the icl_lib unit tests: a headless matplotlib backend and a fixed hypothesis profile."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # headless: the plotting tests must never need a display

from hypothesis import settings  # noqa: E402

# Property tests: few examples, no deadline (the first call of a torch op is slow), and derandomised so that the
# examples, like every other number in the suite, are the same from run to run (and no example database is written).
settings.register_profile("icl_lib", max_examples=25, deadline=None, derandomize=True, database=None)
settings.load_profile("icl_lib")
