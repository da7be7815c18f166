"""Training throughput: ``icl_lib.train`` against a reference loop in the style of Garg
et al.'s code.

Both loops train the same model (read-in, GPT-2 decoder, read-out; interleaved tokens
x_i, (y_i, 0, ..., 0); predictions at the x positions) on the same data (dense linear
regression, x ~ N(0, I_d), w ~ N(0, I_d), prompts of the full size: no curriculum) with
the same batch, Adam at a constant learning rate of 1e-4 and no gradient clipping, in
one process, alternating, so that load on the machine affects both. Usage::

    .venv/bin/python benchmarks/train_throughput.py
        # CPU, laptop config (3, 64, 2; d 5, n 11)
    .venv/bin/python benchmarks/train_throughput.py --device cuda
        # GPU, paper config (12, 256, 8; d 20, n 41)
    .venv/bin/python benchmarks/train_throughput.py --device cuda --config paper
        --steps 2000 --peak-tflops 989

* **ours**: :func:`icl_lib.train.train` on a :class:`~icl_lib.train.TrainConfig` of that
  size, its own code path (prompts sampled on the device from its generator, no host
  read in a step; on CUDA bf16 autocast, fused AdamW and the step captured in a CUDA
  graph), writing into a temporary run directory. Its steps/s is read from its own log
  records: from the record at the end of the warm-up steps to the record at the last
  step. Inside the timing: every step and the loop around it, and the log every
  ``warmup`` steps (one host read of the summed loss, a line of ``metrics.jsonl``).
  Outside: building the model, the warm-up steps (on CUDA: the eager steps and the graph
  capture), and the evaluation, checkpoint and ``model.pt`` written after the last step.
* **reference**: Garg et al.'s ``TransformerModel`` (``read_in = Linear(d, width)``,
  Hugging Face ``GPT2Model`` with dropout 0 and ``use_cache=False``, ``read_out =
  Linear(width, 1)``) and their ``train_step``: xs and ys sampled on the host with
  torch, copied to the device, forward, MSE, backward, ``torch.optim.Adam`` step, and
  ``loss.item()`` every step; fp32. Timed from the end of the same number of warm-up
  steps to the last step.

Reported: steps/s of each run and over all runs of a loop, the ratio ours / reference,
the model FLOP/s (6 x parameters x tokens per step + 12 x layers x width x sequence^2 x
batch for the attention, forward and backward, causal half not discounted) and on CUDA
its fraction of the GPU's peak, the projected time of 500k steps, the peak resident
memory of a fresh process that runs one loop alone for a few steps (Linux ``VmHWM``; a
separate, untimed subprocess per loop and batch, so that memory the allocator kept from
the other loop's runs does not count), and on CUDA ``torch.cuda.max_memory_allocated``
of each timed run. ``--reference-tf32`` runs the reference's matmuls in TF32 (torch
1.11's default, under which Garg et al. trained); ``--diagnostic`` adds our loop in fp32
without a CUDA graph. Writes (or replaces its own section of)
``benchmarks/train_throughput.md``. Needs the ``bench`` extra (``pip install -c
constraints.txt -e ".[bench]"``) for Hugging Face transformers.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers import GPT2Config, GPT2Model

from icl_lib import models
from icl_lib.checkpoints import git_commit
from icl_lib.prompts import interleaved_tokens
from icl_lib.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "benchmarks" / "train_throughput.md"
LR = 1e-4  # Garg et al.'s learning rate, constant, for both loops
PAPER_STEPS = 500_000


@dataclass(frozen=True)
class Shape:
    """Model size and prompt shape of a benchmark config."""

    n_layers: int
    width: int
    n_heads: int
    n_dims: int
    n_points: int
    batches: tuple[int, ...]

    def describe(self) -> str:
        return (
            f"{self.n_layers} layers, width {self.width}, {self.n_heads} heads; d = "
            f"{self.n_dims}, {self.n_points} points ({2 * self.n_points} tokens)"
        )


CONFIGS = {
    "laptop": Shape(
        n_layers=3, width=64, n_heads=2, n_dims=5, n_points=11, batches=(64, 256)
    ),
    "paper": Shape(
        n_layers=12, width=256, n_heads=8, n_dims=20, n_points=41, batches=(64,)
    ),
}
# Dense bf16 tensor-core peak in TFLOP/s, by a substring of torch.cuda.get_device_name
# (first match wins).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),  # same Hopper chip as the H100 SXM, more and faster memory
    ("A100", 312.0),
)


# --------------------------------------------- the reference loop (Garg et al.'s style)


class GargTransformer(nn.Module):
    """Garg et al.'s ``TransformerModel``: Linear read-in, Hugging Face ``GPT2Model``,
    Linear read-out at x tokens."""

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        config = GPT2Config(
            n_positions=2 * shape.n_points,
            n_embd=shape.width,
            n_layer=shape.n_layers,
            n_head=shape.n_heads,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            use_cache=False,
        )
        self.read_in = nn.Linear(shape.n_dims, shape.width)
        self.backbone = GPT2Model(config)
        self.read_out = nn.Linear(shape.width, 1)

    def forward(self, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        embeds = self.read_in(interleaved_tokens(xs, ys))
        hidden = self.backbone(inputs_embeds=embeds).last_hidden_state
        return self.read_out(hidden)[:, ::2, 0]


def used_parameters(model: nn.Module) -> int:
    """Parameters that take part in the forward pass (GPT-2's token embedding ``wte``
    does not: inputs are embeds)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not name.startswith("backbone.wte.")
    )


# --------------------------------------------- measurements


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_mib(field: str) -> float | None:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of this process, in MiB;
    None off Linux."""
    try:
        match = re.search(
            field + r":\s+(\d+) kB", Path("/proc/self/status").read_text()
        )
    except OSError:
        return None
    return int(match.group(1)) / 1024 if match else None


@dataclass
class Run:
    loop: str
    batch: int
    steps: int
    seconds: float
    mean_loss: float
    cuda_peak_mib: float | None
    detail: str = ""

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


def _begin(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _cuda_peak(device: torch.device) -> float | None:
    return (
        torch.cuda.max_memory_allocated(device) / 2**20
        if device.type == "cuda"
        else None
    )


@contextlib.contextmanager
def _matmul_precision(precision: str | None):
    """Set ``torch.set_float32_matmul_precision`` for a block ("high": TF32 on CUDA),
    then restore it."""
    before = torch.get_float32_matmul_precision()
    if precision is not None:
        torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def run_reference(
    shape: Shape,
    batch: int,
    device: torch.device,
    warmup: int,
    steps: int,
    seed: int,
    tf32: bool = False,
) -> Run:
    """Garg et al.'s train loop: host-sampled data, a copy to the device and
    ``loss.item()`` every step; fp32.

    ``tf32``: fp32 matmuls in TF32, as Garg et al.'s torch 1.11 did by default on Ampere
    and later GPUs (torch has defaulted to full fp32 since 1.12).
    """
    with _matmul_precision("high" if tf32 else None):
        return _run_reference(shape, batch, device, warmup, steps, seed)


def _run_reference(
    shape: Shape, batch: int, device: torch.device, warmup: int, steps: int, seed: int
) -> Run:
    _begin(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GargTransformer(shape)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    host = torch.Generator().manual_seed(seed)
    n_points, d = shape.n_points, shape.n_dims

    def train_step() -> float:
        # their GaussianSampler, on the host
        xs = torch.randn(batch, n_points, d, generator=host)
        w = torch.randn(batch, d, 1, generator=host)  # their LinearRegression task
        ys = (xs @ w)[:, :, 0]
        xs, ys = xs.to(device), ys.to(device)
        optimizer.zero_grad()
        output = model(xs, ys)
        loss = (output - ys).square().mean()
        loss.backward()
        optimizer.step()
        return loss.detach().item()

    for _ in range(warmup):
        train_step()
    _sync(device)
    start = time.perf_counter()
    total = sum(train_step() for _ in range(steps))
    _sync(device)
    seconds = time.perf_counter() - start
    return Run("reference", batch, steps, seconds, total / steps, _cuda_peak(device))


def our_config(
    shape: Shape,
    batch: int,
    device: torch.device,
    warmup: int,
    steps: int,
    seed: int,
    threads: int,
    fast: bool = True,
) -> TrainConfig:
    """The TrainConfig of the same workload: interleaved tokens, Adam 1e-4 constant, no
    clipping, no curriculum."""
    return TrainConfig(
        model=_model_spec(shape),
        task={"name": "linear"},
        n_dims=shape.n_dims,
        n_points=shape.n_points,
        batch_size=batch,
        steps=warmup + steps,
        lr=LR,
        warmup_steps=0,
        lr_schedule="constant",
        weight_decay=0.0,
        grad_clip=0.0,
        seed=seed,
        curriculum=None,
        # a log record right at the end of the warm-up, then every `warmup` steps
        log_every=warmup,
        eval_every=0,  # evaluation after the last step only (outside the timing)
        eval_batch=batch,
        checkpoint_every=0,  # checkpoint after the last step only (outside the timing)
        device=str(device),
        threads=threads,
        autocast=fast,
        cuda_graph=fast and device.type == "cuda",
    )


def run_ours(
    shape: Shape,
    batch: int,
    device: torch.device,
    warmup: int,
    steps: int,
    seed: int,
    threads: int,
    fast: bool = True,
) -> Run:
    """icl_lib.train.train into a temporary directory; steps/s from its own log records
    past the warm-up."""
    config = our_config(shape, batch, device, warmup, steps, seed, threads, fast)
    _begin(device)
    with tempfile.TemporaryDirectory(prefix="train_throughput_") as tmp:
        result = train(
            config,
            Path(tmp) / "run",
            resume=False,
            progress=False,
            command="benchmarks/train_throughput.py",
        )
        meta_graph = ""
        if device.type == "cuda" and config.cuda_graph:
            meta = (Path(tmp) / "run" / "meta.json").read_text()
            found = re.search(r'"cuda_graph": "([^"]*)"', meta)
            meta_graph = found.group(1) if found else "unknown"
    cuda = _cuda_peak(device)
    logs = [r for r in result.history if "train_loss" in r and r["step"] >= warmup]
    first, last = logs[0], logs[-1]
    if first["step"] != warmup or last["step"] != warmup + steps:
        raise RuntimeError(
            f"unexpected log steps {first['step']} .. {last['step']} (warm-up "
            f"{warmup}, steps {steps})"
        )
    # train_loss of a record is the mean over the steps since the previous record.
    timed = logs[1:]
    mean_loss = (
        sum(r["train_loss"] * (r["step"] - p["step"]) for p, r in zip(logs, timed))
        / steps
    )
    loop = "ours" if fast else "ours, fp32 eager (diagnostic)"
    return Run(
        loop,
        batch,
        steps,
        last["wall_s"] - first["wall_s"],
        mean_loss,
        cuda,
        detail=f"CUDA graph: {meta_graph}" if meta_graph else "",
    )


def _model_spec(shape: Shape) -> dict:
    return {
        "name": "gpt",
        "n_layers": shape.n_layers,
        "width": shape.width,
        "n_heads": shape.n_heads,
        "token_format": "interleaved",
    }


def parameter_note(name: str, shape: Shape) -> str:
    """Parameters of our GPT and of the reference at ``shape``: the same, but for
    GPT-2's unused token embedding."""
    ours = models.count_parameters(
        models.make_model(_model_spec(shape), shape.n_dims, shape.n_points)
    )
    reference = GargTransformer(shape)
    wte = reference.backbone.wte.weight.numel()
    used = used_parameters(reference)
    verdict = "equal" if used == ours else f"DIFFER by {used - ours:+,}"
    return (
        f"{name} size: ours {ours:,} parameters; reference {used:,} used ({verdict}) + "
        f"{wte:,} in GPT-2's token embedding `wte` (vocabulary 50257 x width; never "
        "read, inputs are embeddings, so it gets no gradient and Adam skips it) = "
        f"{models.count_parameters(reference):,}"
    )


def model_flops_per_step(shape: Shape, batch: int, parameters: int) -> float:
    """6 N T (matmuls, forward and backward) + 12 L w S^2 B (attention QK^T and AV,
    forward and backward)."""
    sequence = 2 * shape.n_points
    return (
        6.0 * parameters * batch * sequence
        + 12.0 * shape.n_layers * shape.width * sequence**2 * batch
    )


def peak_tflops(device: torch.device, given: float | None) -> tuple[float | None, str]:
    if given is not None:
        return given, f"{given:g} TFLOP/s (given with --peak-tflops)"
    if device.type != "cuda":
        return None, "no peak for the CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, (
                f"{value:g} TFLOP/s: dense bf16 tensor-core peak assumed for a {key} "
                f"({name}), from NVIDIA's data sheet"
            )
    return None, f"unknown for {name}: pass --peak-tflops"


PROBE_STEPS = 20  # steps after the warm-up in a memory probe


def probe_memory(
    loop: str,
    config_name: str,
    batch: int,
    device: torch.device,
    warmup: int,
    threads: int,
    tf32: bool,
) -> tuple[float, float] | None:
    """``(peak RSS, RSS after imports)`` in MiB of a fresh process that runs one loop
    alone; None if unavailable."""
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--probe",
        loop,
        "--config",
        config_name,
        "--device",
        str(device),
        "--batches",
        str(batch),
        "--warmup",
        str(warmup),
        "--steps",
        str(PROBE_STEPS),
        "--threads",
        str(threads),
    ] + (["--reference-tf32"] if tf32 else [])
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    found = re.search(r"^PROBE (\S+) (\S+)$", result.stdout, re.M)
    if result.returncode != 0 or found is None or "None" in found.groups():
        print(
            f"memory probe of {loop} at batch {batch} failed:\n{result.stderr[-2000:]}",
            file=sys.stderr,
        )
        return None
    return float(found.group(1)), float(found.group(2))


def _probe(
    loop: str,
    shape: Shape,
    batch: int,
    device: torch.device,
    warmup: int,
    steps: int,
    threads: int,
    tf32: bool,
) -> None:
    """The child side of :func:`probe_memory`: run the loop, print its peak RSS and the
    RSS before it started."""
    before = _proc_status_mib("VmRSS")
    if loop == "ours":
        run_ours(shape, batch, device, warmup, steps, seed=0, threads=threads)
    else:
        run_reference(shape, batch, device, warmup, steps, seed=0, tf32=tf32)
    print(f"PROBE {_proc_status_mib('VmHWM')} {before}", flush=True)


# --------------------------------------------- report


def _fmt_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        found = re.search(r"model name\s*:\s*(.+)", Path("/proc/cpuinfo").read_text())
        if found:
            cpu = found.group(1).strip()
    text = f"{cpu}, {os.cpu_count()} cores"
    if device.type == "cuda":
        text = (
            f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}); host "
            f"{text}"
        )
    return text


def table(
    runs: list[Run],
    shape: Shape,
    parameters: int,
    peak: float | None,
    memory: dict[tuple[str, int], tuple[float, float] | None],
    on_cuda: bool,
) -> list[str]:
    """Markdown rows: one per batch and loop; GPU-only columns (peak fraction, CUDA
    memory) only on CUDA."""
    unit, scale = ("TFLOP/s", 1e12) if on_cuda else ("GFLOP/s", 1e9)
    columns = [
        "batch",
        "loop",
        "steps/s, each run",
        "steps/s, all runs",
        "ratio ours / reference",
        f"model {unit}",
    ]
    columns += ["of peak"] if on_cuda else []
    columns += ["500k steps would take", "peak RSS MiB (over imports)"]
    columns += ["CUDA max allocated MiB"] if on_cuda else []
    columns += ["mean loss"]
    rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for batch in shape.batches:
        by_loop: dict[str, list[Run]] = {}
        for run in runs:
            if run.batch == batch:
                by_loop.setdefault(run.loop, []).append(run)
        rates = {
            loop: sum(r.steps for r in rs) / sum(r.seconds for r in rs)
            for loop, rs in by_loop.items()
        }
        flops = model_flops_per_step(shape, batch, parameters)
        for loop, rs in by_loop.items():
            rate = rates[loop]
            probe = memory.get((loop, batch))
            cuda = max(
                (r.cuda_peak_mib for r in rs if r.cuda_peak_mib is not None),
                default=None,
            )
            cells = [
                str(batch),
                loop,
                ", ".join(f"{r.steps_per_s:.2f}" for r in rs),
                f"{rate:.2f}",
                f"{rate / rates['reference']:.2f}x"
                if "reference" in rates and loop != "reference"
                else "",
                f"{flops * rate / scale:.3g}",
            ]
            if on_cuda:
                cells.append(
                    f"{100 * flops * rate / (peak * 1e12):.2f}%" if peak else "n/a"
                )
            cells += [
                _fmt_seconds(PAPER_STEPS / rate),
                "n/a"
                if probe is None
                else f"{probe[0]:.0f} (+{probe[0] - probe[1]:.0f})",
            ]
            if on_cuda:
                cells.append("n/a" if cuda is None else f"{cuda:.0f}")
            cells.append(
                f"{sum(r.mean_loss * r.steps for r in rs) / sum(r.steps for r in rs):.3f}"
            )
            rows.append("| " + " | ".join(cells) + " |")
    return rows


HEADER = """# Training throughput: icl_lib.train against a Garg et al.-style loop

Written by `benchmarks/train_throughput.py` (one section per config and device; a run \
replaces its own section).
Both loops train the same model (read-in, GPT-2 decoder, read-out; Garg et al.'s \
interleaved tokens, predictions at
the x positions) on the same data (dense linear regression, prompts of the full size, \
no curriculum), same batch,
Adam at a constant 1e-4, no clipping, one process, the loops alternating.

* **ours**: `icl_lib.train.train` with its own code path (prompts sampled on the \
device, no host read inside a
  step; on CUDA bf16 autocast, fused AdamW and a CUDA graph), into a temporary run \
directory. Timed from its log
  record at the end of the warm-up steps to the one at the last step: the steps, the \
loop around them and a log
  (one host read, one line of `metrics.jsonl`) every `warm-up` steps are in; model \
building, the warm-up steps
  (with the graph capture), the final evaluation, checkpoint and `model.pt` are out.
* **reference**: Garg et al.'s `TransformerModel` (Hugging Face `GPT2Model` backbone) \
and `train_step`: data
  sampled on the host, copied to the device, forward, MSE, backward, \
`torch.optim.Adam`, `loss.item()` every step;
  fp32. Timed after the same number of warm-up steps.
* **model FLOP/s** (GFLOP/s on the CPU, TFLOP/s on CUDA): 6 x parameters x tokens per \
step + 12 x layers x width x
  sequence^2 x batch (attention, forward and backward, causal half not discounted), \
the same count for both loops;
  parameters exclude the positional embedding (and GPT-2's unused token embedding). \
**500k steps would take**:
  500,000 / steps/s at this config, the paper's run length, with prompts at full size \
throughout: icl_lib's
  curriculum keeps shapes static, so this is its real cost; Garg et al.'s loop uses \
shorter prompts during the
  curriculum's first 30k steps (6% of the run), so its real time would be at most a \
few percent shorter. **Peak
  RSS**: the resident-memory high-water mark of a fresh process that runs that loop \
alone for the warm-up and 20
  more steps (untimed, after the timed runs; the process imports torch, transformers \
and icl_lib whichever loop it
  runs), and in brackets its rise over the RSS after those imports. **Mean loss**: \
over the timed steps, a check
  that both train the same task (about d at the start).

The two models have the same architecture and parameter count but are not \
bit-identical: GPT-2 uses the tanh
approximation of GELU (`gelu_new`, written as elementwise multiplies, a power and a \
tanh) where ours uses `nn.GELU`
(one kernel); the reference's initial weights come from Hugging Face's initialisation. \
Hugging Face transformers 5
runs GPT-2's attention through `scaled_dot_product_attention` ("sdpa"); Garg et al.'s \
pinned 4.17 used the eager
matmul-softmax-matmul attention, so this reference is, if anything, faster than their \
original code.
"""


def write_section(key: str, lines: list[str]) -> None:
    begin, end = f"<!-- section {key} -->", f"<!-- end {key} -->"
    body = "\n".join([begin, *lines, end])
    text = OUTPUT.read_text() if OUTPUT.exists() else HEADER
    if not text.startswith("# Training throughput"):
        text = HEADER
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: body, text)
    else:
        text = text.rstrip("\n") + "\n\n" + body
    sections = re.findall(r"<!-- section .*? -->.*?<!-- end .*? -->", text, re.S)
    OUTPUT.write_text(HEADER + "\n" + "\n\n".join(sections) + "\n")


GOAL_RATIO = 10.0  # ours at least 10x the reference's steps/s on the GPU
GOAL_SECONDS = 15 * 60  # 500k paper-config steps in under 15 minutes on one H100


def goal_lines(runs: list[Run], batch: int) -> list[str]:
    """The issue's goals on the GPU at the paper config, checked against this run."""

    def rate(loop: str) -> float:
        chosen = [r for r in runs if r.loop == loop and r.batch == batch]
        return sum(r.steps for r in chosen) / sum(r.seconds for r in chosen)

    ours, reference = rate("ours"), rate("reference")
    needed = PAPER_STEPS / GOAL_SECONDS
    return [
        f"Goals (batch {batch}): ratio >= {GOAL_RATIO:g}x: {ours / reference:.1f}x, "
        f"{'met' if ours / reference >= GOAL_RATIO else 'NOT met'}; 500k steps in "
        f"under {GOAL_SECONDS // 60} min (>= {needed:.0f} steps/s): "
        f"{_fmt_seconds(PAPER_STEPS / ours)}, {'met' if ours >= needed else 'NOT met'} "
        "(on this GPU; the goal names one H100).",
    ]


# --------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument(
        "--config",
        choices=sorted(CONFIGS),
        help="laptop (default on the CPU) or paper (default on CUDA)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help=(
            "timed steps per run (default: 200 laptop, 2000 paper on CUDA, 5 paper on "
            "CPU)"
        ),
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help=(
            "untimed steps before the timing, also our log interval (default: 500 on "
            "CUDA, 20 laptop and 3 paper on the CPU)"
        ),
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="runs of each loop, alternating (default 2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for both loops (default 1)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="the device's peak TFLOP/s (default: looked up from its name)",
    )
    parser.add_argument(
        "--diagnostic",
        action="store_true",
        help=(
            "on CUDA, also run ours in fp32 without a CUDA graph (what the precision "
            "and graph bring)"
        ),
    )
    parser.add_argument(
        "--reference-tf32",
        action="store_true",
        help=(
            "run the reference's fp32 matmuls in TF32 (torch 1.11's default, which "
            "Garg et al. used)"
        ),
    )
    parser.add_argument(
        "--batches",
        help=(
            "comma-separated batch sizes (default: the config's: 64,256 laptop, 64 "
            "paper)"
        ),
    )
    parser.add_argument(
        "--no-memory-probe", action="store_true", help="skip the peak-RSS subprocesses"
    )
    parser.add_argument(
        "--probe", choices=("ours", "reference"), help=argparse.SUPPRESS
    )  # child of probe_memory
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the section, do not write train_throughput.md",
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda but CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        parser.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    config_name = args.config or ("paper" if device.type == "cuda" else "laptop")
    shape = CONFIGS[config_name]
    if args.batches:
        try:
            batches = tuple(int(b) for b in args.batches.split(","))
        except ValueError:
            parser.error(
                f"--batches must be comma-separated integers, got {args.batches!r}"
            )
        if min(batches) < 1:
            parser.error(f"--batches must be positive, got {args.batches!r}")
        shape = dataclasses.replace(shape, batches=batches)
    cuda = device.type == "cuda"
    warmup = (
        args.warmup
        if args.warmup is not None
        else (500 if cuda else (20 if config_name == "laptop" else 3))
    )
    steps = (
        args.steps
        if args.steps is not None
        else (2000 if cuda else (200 if config_name == "laptop" else 5))
    )
    checked = (
        ("--steps", steps),
        ("--warmup", warmup),
        ("--repeats", args.repeats),
        ("--threads", args.threads),
    )
    for name, value in checked:
        if value < 1:
            parser.error(f"{name} must be >= 1, got {value}")
    torch.set_num_threads(args.threads)
    if args.probe:
        _probe(
            args.probe,
            shape,
            shape.batches[0],
            device,
            warmup,
            steps,
            args.threads,
            args.reference_tf32,
        )
        return
    peak, peak_note = peak_tflops(device, args.peak_tflops)

    # Parameter counts at the paper size (and this config's): ours and the reference
    # must match.
    counts = [parameter_note("paper", CONFIGS["paper"])]
    if config_name != "paper":
        counts.append(parameter_note(config_name, shape))
    for note in counts:
        print(note, flush=True)
    ours = models.make_model(_model_spec(shape), shape.n_dims, shape.n_points)
    flop_parameters = models.count_parameters(ours) - ours.positions.weight.numel()
    attn_impl = GargTransformer(shape).backbone.config._attn_implementation
    del ours

    loops = ["ours", "reference"]
    runs: list[Run] = []
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for batch in shape.batches:
            # alternate which loop goes first
            order = loops if repeat % 2 == 0 else loops[::-1]
            for loop in order:
                if loop == "ours":
                    run = run_ours(
                        shape,
                        batch,
                        device,
                        warmup,
                        steps,
                        seed=repeat,
                        threads=args.threads,
                    )
                else:
                    run = run_reference(
                        shape,
                        batch,
                        device,
                        warmup,
                        steps,
                        seed=repeat,
                        tf32=args.reference_tf32,
                    )
                runs.append(run)
                print(
                    f"repeat {repeat + 1}, batch {batch}, {run.loop}: "
                    f"{run.steps_per_s:.2f} steps/s ({run.steps} steps in "
                    f"{run.seconds:.1f} s) {run.detail}",
                    flush=True,
                )
            if args.diagnostic and device.type == "cuda":
                run = run_ours(
                    shape,
                    batch,
                    device,
                    warmup,
                    steps,
                    seed=repeat,
                    threads=args.threads,
                    fast=False,
                )
                runs.append(run)
                print(
                    f"repeat {repeat + 1}, batch {batch}, {run.loop}: "
                    f"{run.steps_per_s:.2f} steps/s",
                    flush=True,
                )
    total = time.perf_counter() - started
    memory: dict[tuple[str, int], tuple[float, float] | None] = {}
    if not args.no_memory_probe:
        for batch in shape.batches:
            for loop in loops:
                memory[(loop, batch)] = probe_memory(
                    loop,
                    config_name,
                    batch,
                    device,
                    warmup,
                    args.threads,
                    args.reference_tf32,
                )

    commit, dirty = git_commit(ROOT)
    command = "python benchmarks/train_throughput.py" + (
        " " + shlex.join(argv) if argv else ""
    )
    if device.type == "cuda":
        reference_precision = (
            "fp32 with TF32 matmuls (`--reference-tf32`: "
            "`torch.set_float32_matmul_precision('high')`, torch 1.11's default that "
            "Garg et al. ran under)"
            if args.reference_tf32
            else (
                f"fp32 (matmul precision `{torch.get_float32_matmul_precision()}`, "
                "torch's default since 1.12; Garg et al.'s torch 1.11 used TF32 by "
                "default, see `--reference-tf32`)"
            )
        )
        precision = (
            "ours bf16 autocast + CUDA graph + fused AdamW; reference "
            f"{reference_precision}"
        )
    else:
        precision = "both fp32 (icl_lib's autocast is CUDA-only)"
    graph_notes = sorted({r.detail for r in runs if r.detail})
    lines = [
        f"## {config_name} config on {device.type}",
        "",
        f"Measured {datetime.date.today()} at commit "
        f"`{commit[:7]}`{' with uncommitted changes' if dirty else ''} by `{command}` "
        f"on {_machine(device)}; torch {torch.__version__} on {args.threads} CPU "
        f"thread(s) (`torch.set_num_threads({args.threads})`, and `threads = "
        f"{args.threads}` in our config), transformers {transformers.__version__} "
        f"(GPT-2 attention: `{attn_impl}`), Python {platform.python_version()}.",
        "",
        f"Config: {shape.describe()}; {warmup} warm-up steps then {steps} timed steps "
        f"per run, {args.repeats} run(s) of each loop alternating (order flipped every "
        f"repeat); {precision}. {len(runs)} runs took {total:.0f} s in all."
        + (
            f" Peak for the FLOP/s fraction: {peak_note}."
            if device.type == "cuda"
            else ""
        )
        + (f" {'; '.join(graph_notes)}." if graph_notes else ""),
        "",
        *[f"- {c}" for c in counts],
        f"- FLOP count uses {flop_parameters:,} parameters (ours, less the positional "
        "embedding).",
        "",
        *table(runs, shape, flop_parameters, peak, memory, device.type == "cuda"),
    ]
    if device.type == "cuda" and config_name == "paper":
        lines += ["", *goal_lines(runs, shape.batches[0])]
    print("\n".join(lines))
    if not args.no_write:
        write_section(f"{config_name}/{device.type}", lines)
        print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
