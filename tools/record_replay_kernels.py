"""Replay committed runs here and report how close each replay comes; stamp the kernels that replay one bit for bit.

    python -m tools.record_replay_kernels
        # replay the runs that record no kernels; stamp the bit-exact ones
    python -m tools.record_replay_kernels --report
        # replay every run, write nothing (try it under other kernels:
        # ATEN_CPU_CAPABILITY=default, MKL_ENABLE_INSTRUCTIONS=AVX2)

The runs recorded before ``meta.json`` held the kernels that decide bit-exactness
(:mod:`icl_lib.replay`) get them under ``replayed_bit_for_bit_on`` when their first
logged step replays bit for bit here, with that step, the commit and the date: the
replay test then demands bit equality on such a machine and a tolerance elsewhere.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from datetime import datetime, timezone

from icl_lib import checkpoints
from icl_lib.replay import (
    FLOAT_KEYS,
    REPLAYED_ON,
    kernels_here,
    replay_first_log,
    replay_rtol,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.record_replay_kernels", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--report", action="store_true", help="replay every run and write nothing"
    )
    parser.add_argument(
        "names", nargs="*", help="runs to replay (default: every committed run)"
    )
    args = parser.parse_args(argv)
    os.chdir(checkpoints.repository_root())
    names = args.names or sorted(
        m.parent.name for m in checkpoints.checkpoints_root().glob("*/meta.json")
    )
    commit, _ = checkpoints.git_commit()
    print(f"kernels here: {kernels_here()}")
    for name in names:
        meta = checkpoints.load_meta(name)
        if meta["device"] != "cpu" or (
            not args.report and ("cpu_capability" in meta or REPLAYED_ON in meta)
        ):
            continue
        with (
            tempfile.TemporaryDirectory() as tmp,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            committed, rerun = replay_first_log(name, os.path.join(tmp, name))
        steps = committed["step"]
        worst = max(
            abs(rerun[k] - committed[k]) / abs(committed[k]) for k in FLOAT_KEYS
        )
        exact = all(rerun[k] == committed[k] for k in FLOAT_KEYS)
        verdict = (
            "bit for bit"
            if exact
            else f"relative difference {worst:.1e} (tolerance {replay_rtol(steps):.1e})"
        )
        print(f"{name}: step {steps}: {verdict}", flush=True)
        if exact and not args.report:
            stamp = {
                **kernels_here(),
                "step": steps,
                "git_commit": commit,
                "date": datetime.now(timezone.utc).date().isoformat(),
            }
            checkpoints.write_meta(
                checkpoints.checkpoints_root() / name, {**meta, REPLAYED_ON: stamp}
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
