"""Sweeps (icl_lib.sweep): the sweep files expand to the committed configs' runs, a
local sweep of three tiny runs finishes (resuming a stopped and a killed run) and a
second call does nothing, and the Slurm path builds its job array with submitit against
stand-ins of sbatch and srun (no cluster). Run directories live under tmp_path."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

from icl_lib import checkpoints, sweep
from icl_lib.checkpoints import META_FILE, METRICS_FILE, MODEL_FILE, repository_root
from icl_lib.train import load_config, train

REPO = repository_root()
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.toml"))

TINY = """\
n_dims = 3
n_points = 5
batch_size = 16
steps = 6
lr = 1e-3
warmup_steps = 2
log_every = 2
eval_every = 3
eval_batch = 32
checkpoint_every = 3
device = "cpu"
threads = 1

[model]
name = "gpt"
n_layers = 1
width = 16
n_heads = 2
token_format = "paired"

[task]
name = "linear"
"""


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        code = sweep.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def header_commands(config: Path) -> list[str]:
    """The training commands a config's header gives (its 'Produce:' and 'Seed N:'
    lines)."""
    return re.findall(
        r"^# [A-Za-z0-9 ]+:\s+(python -m icl_lib\.train .*)$", config.read_text(), re.M
    )


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_a_sweep_file_expands_to_the_runs_of_the_committed_configs(path, monkeypatch):
    monkeypatch.chdir(REPO)
    found = sweep.load_sweep(path)
    assert len(found) >= 3
    for run in found:
        config_file = REPO / run.config_path
        own = load_config(config_file).replace(
            seed=run.config.seed, device=run.device or "auto"
        )
        assert run.config.to_dict() == own.to_dict()
        assert run.name == config_file.stem + (
            "" if run.seed is None else f"_seed{run.seed}"
        )
        assert (
            run.out_dir
            == Path("runs" if "paper" in path.stem else "checkpoints") / run.name
        )
        # the config's own command, rerun alone
        assert run.command in header_commands(config_file), run.command
        try:
            directory = checkpoints.run_directory(run.name)
        except ValueError:
            continue  # not committed yet
        assert checkpoints.load_meta(directory)["command"] == run.command


def test_the_sweep_files_are_chapter_6s_twins_and_chapter_5s_shares(monkeypatch):
    monkeypatch.chdir(REPO)
    twins = sweep.load_sweep(
        REPO / "configs" / "sweeps" / "raventos_pool_batch256.toml"
    )
    # seed 1 at the two M values that bracket the threshold, in both arms
    bracketing = [(128, None), (128, 1), (2048, None), (2048, 1)]
    assert [(r.config.task["pool_size"], r.seed) for r in twins] == [
        (32, None),
        *bracketing[:2],
        (512, None),
        *bracketing[2:],
        (8192, None),
    ]
    assert {r.config.batch_size for r in twins} == {256}
    sweep_128 = sweep.load_sweep(
        REPO / "configs" / "sweeps" / "raventos_pool_laptop.toml"
    )
    assert [
        (r.config.task["pool_size"], r.seed) for r in sweep_128 if r.seed is not None
    ] == [(128, 1), (2048, 1)]
    assert {r.config.batch_size for r in sweep_128} == {128}
    shares = sweep.load_sweep(
        REPO / "configs" / "sweeps" / "yadlowsky_per_batch_shares.toml"
    )
    assert [(r.config.task["weights"][1], r.config.seed) for r in shares] == [
        (0.25, 0),
        (0.5, 0),
        (0.5, 1),
        (0.75, 0),
    ]
    paper = sweep.load_sweep(REPO / "configs" / "sweeps" / "raventos_pool_paper.toml")
    assert [r.config.task["pool_size"] for r in paper] == [4**i * 2 for i in range(8)]
    assert {r.config.device for r in paper} == {"cuda"} and {
        r.config.model["n_layers"] for r in paper
    } == {8}


def test_a_local_sweep_finishes_resumes_and_then_does_nothing(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(
        'root = "runs"\n[[runs]]\nconfig = "tiny.toml"\nseeds = [0, 1, 2]\n'
    )
    found = sweep.load_sweep("sweep.toml")
    assert [r.name for r in found] == ["tiny", "tiny_seed1", "tiny_seed2"]
    stopped, killed = found[1], found[2]
    # a run stopped at step 3, and one killed there (kill -9 leaves "running")
    for run in (stopped, killed):
        train(run.config, run.out_dir, progress=False, stop_at=3, command=run.command)
    meta = json.loads((killed.out_dir / META_FILE).read_text())
    (killed.out_dir / META_FILE).write_text(json.dumps({**meta, "status": "running"}))
    before = (stopped.out_dir / METRICS_FILE).read_text()
    assert [sweep.run_state(r) for r in found] == [
        ("not started", 0),
        ("interrupted", 3),
        ("interrupted", 3),
    ]
    with checkpoints.run_lock(killed.out_dir):  # as a training process holds it
        assert sweep.run_state(killed) == ("running", 3)

    code, out, err = run_main(["sweep.toml", "--jobs", "3", "--logs", "logs"], capsys)
    assert code == 0, out + err
    # submitit's job logs
    logs = "".join(p.read_text() for p in (tmp_path / "logs").rglob("*.out"))
    assert logs.count("The following command is sent") == 3, logs
    assert [sweep.run_state(r) for r in found] == [("finished", 6)] * 3
    assert out.count("trained") == 3, out
    for run in found:
        meta = json.loads((run.out_dir / META_FILE).read_text())
        assert (
            meta["status"] == "finished"
            and meta["command"] == run.command
            and meta["seed"] == run.config.seed
        )
        assert (run.out_dir / MODEL_FILE).is_file()
    # resumed, not started over
    assert (stopped.out_dir / METRICS_FILE).read_text().startswith(before)

    files = {p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()}
    code, out, err = run_main(["sweep.toml", "--logs", "logs"], capsys)
    assert code == 0 and out.count("skipped") == 3 and "finished" in out, out + err
    assert {
        p: p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file()
    } == files


def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sbatch: str) -> None:
    """Stand-ins for srun and sbatch (whose script is ``sbatch``) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\n{sbatch}\n")
    for name in ("srun", "sbatch"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def test_the_slurm_path_submits_one_job_array_of_the_runs_left(
    tmp_path, monkeypatch, capsys
):
    """sbatch and srun are stand-ins: sbatch keeps the script submitit wrote and answers
    as Slurm does."""
    fake_slurm(
        tmp_path,
        monkeypatch,
        f'cp "$1" {tmp_path}/script.sh\necho "Submitted batch job 4242"',
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(
        '[[runs]]\nconfig = "tiny.toml"\nseeds = [0, 1, 2]\n'
    )
    found = sweep.load_sweep("sweep.toml", root="runs")
    # finished: not submitted
    train(found[0].config, found[0].out_dir, progress=False, command=found[0].command)

    code, out, err = run_main(
        [
            "sweep.toml",
            "--root",
            "runs",
            "--executor",
            "slurm",
            "--partition",
            "gpu",
            "--gpus-per-job",
            "1",
            "--time",
            "90",
            "--array-parallelism",
            "1",
            "--logs",
            "logs",
        ],
        capsys,
    )
    assert code == 0, out + err
    assert (
        "submitted: job 4242_0" in out
        and "submitted: job 4242_1" in out
        and out.count("submitted") == 2
    ), out
    script = (tmp_path / "script.sh").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --array=0-1%1",
        "#SBATCH --job-name=sweep",
    ):
        assert line in script, script
    job = sweep.job(found[1], tmp_path)
    assert job.command == [
        sys.executable,
        "-m",
        "icl_lib.train",
        "tiny.toml",
        "--seed",
        "1",
        "--out",
        "runs/tiny_seed1",
        "--no-progress",
    ]
    assert job.cwd == str(tmp_path)


def test_a_refused_submission_is_one_line(tmp_path, monkeypatch, capsys):
    fake_slurm(
        tmp_path,
        monkeypatch,
        'echo "sbatch: error: invalid partition specified: nope" >&2\nexit 1',
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY)
    (tmp_path / "sweep.toml").write_text(
        'root = "runs"\n[[runs]]\nconfig = "tiny.toml"\n'
    )
    code, out, err = run_main(
        ["sweep.toml", "--executor", "slurm", "--partition", "nope", "--logs", "logs"],
        capsys,
    )
    # after sbatch's own message, which submitit passes through
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err, err
    assert (
        last.startswith("error: sbatch refused the sweep's job array (")
        and "invalid partition" in last
    ), err
    assert last.endswith("nothing was submitted"), err
    assert not (tmp_path / "runs").exists()


def test_executor_parameters_are_submitits():
    assert sweep.executor_parameters("local", time_min=30) == {
        "timeout_min": 30,
        "name": "sweep",
    }
    assert sweep.executor_parameters(
        "slurm",
        time_min=60,
        partition="gpu",
        gpus_per_job=1,
        cpus_per_task=4,
        array_parallelism=8,
        name="twins",
    ) == {
        "timeout_min": 60,
        "name": "twins",
        "gpus_per_node": 1,
        "cpus_per_task": 4,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 8,
    }
