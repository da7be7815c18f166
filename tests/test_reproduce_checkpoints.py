"""Every committed checkpoint reproduces from the command recorded in its meta.json
(:mod:`icl_lib.replay`).

Each test re-runs a run's recorded command up to the first step its ``metrics.jsonl``
logs into a temporary directory and compares the training metrics logged there with the
committed ones: bit for bit where this machine has the kernels the run was recorded
with, else to :func:`~icl_lib.replay.replay_rtol`; the report's ``replay`` property says
which. Runs whose config differs from another committed run's only by the seed and the
batch size (the seeds of a run, chapter 6's batch-256 twins) take the same code path
and are covered by the run with the smallest batch and seed, which is cheaper to
replay. A run recorded on a GPU is skipped on a CPU, with the reason.
"""

from __future__ import annotations

import json
import math
import re

import pytest

from icl_lib import checkpoints
from icl_lib.replay import (
    EXACT_KEYS,
    FLOAT_KEYS,
    kernels_match,
    replay_first_log,
    replay_rtol,
)

# what a covered run may change (module docstring)
COVERED_FIELDS = ("seed", "batch_size")


def replayed_runs() -> list[str]:
    """The committed runs but those named ``..._seedN`` (N > 0), one per config up to
    :data:`COVERED_FIELDS`: the one with the smallest (batch size, seed)."""
    cheapest: dict[str, tuple[int, int, str]] = {}
    for meta_file in checkpoints.checkpoints_root().glob("*/meta.json"):
        name = meta_file.parent.name
        if re.search(r"_seed[1-9]\d*$", name):
            continue
        config = dict(checkpoints.load_meta(name)["config"])
        cost = tuple(config.pop(field) for field in COVERED_FIELDS)
        key = json.dumps(config, sort_keys=True)
        cheapest[key] = min(cheapest.get(key, (*cost, name)), (*cost, name))
    return sorted(name for *_, name in cheapest.values())


RUNS = replayed_runs()


@pytest.mark.parametrize("name", RUNS)
def test_the_first_steps_of_a_committed_run_reproduce(
    name, tmp_path, monkeypatch, record_property
):
    meta = checkpoints.load_meta(name)
    if meta["device"] != "cpu":
        pytest.skip(
            f"{name} was recorded on {meta['device']} ({meta.get('device_name')}): "
            "CUDA kernels and bf16 autocast are not replayed on a CPU"
        )
    monkeypatch.chdir(checkpoints.repository_root())
    committed, rerun = replay_first_log(name, tmp_path / name)
    steps = committed["step"]
    for key in EXACT_KEYS:
        assert (
            rerun[key] == committed[key]
        ), f"{name}: {key} at step {steps} is {rerun[key]}, committed {committed[key]}"
    exact, why = kernels_match(meta)
    rtol = replay_rtol(steps)
    record_property("replay", "bit for bit" if exact else f"to rtol {rtol:.1e} ({why})")
    for key in FLOAT_KEYS:
        if exact:
            assert rerun[key] == committed[key], (
                f"{name}: {key} at step {steps} is {rerun[key]}, committed "
                f"{committed[key]}; the kernels are the recorded ones, so the replay "
                "must be bit for bit"
            )
        else:
            assert math.isclose(rerun[key], committed[key], rel_tol=rtol), (
                f"{name}: {key} at step {steps} is {rerun[key]}, committed "
                f"{committed[key]}: beyond the relative tolerance {rtol:.1e} of a "
                f"replay on other kernels ({why})"
            )


def test_kernels_match_only_where_every_recorded_kernel_is_this_machines():
    from icl_lib.replay import REPLAYED_ON, kernels_here

    here = kernels_here()
    assert kernels_match(here) == (True, "")
    assert kernels_match({REPLAYED_ON: here}) == (True, "")
    other = {
        **here,
        "cpu_capability": "AVX512" if here["cpu_capability"] != "AVX512" else "DEFAULT",
    }
    assert (
        kernels_match(other)[0] is False and "cpu_capability" in kernels_match(other)[1]
    )
    assert kernels_match({"device": "cpu"}) == (
        False,
        f"the run does not record {', '.join(sorted(here))}",
    )
    assert kernels_match({**here, "world_size": 2}) == (
        False,
        "recorded over 2 processes (torchrun), replayed in one",
    )
