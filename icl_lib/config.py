"""A training run's configuration: :class:`TrainConfig`, Garg et al.'s
:class:`Curriculum`, the learning-rate schedules and the random streams' seeds.

``configs/*.toml`` spell the same fields (:func:`load_config`); a run stores
``TrainConfig.to_dict()`` in its ``checkpoint.pt`` and ``meta.json``. Every field is
checked here, once, when the config is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from icl_lib import checks, models
from icl_lib.devices import parse_device
from icl_lib.tasks import check_fits, make_task


@dataclass(frozen=True)
class Curriculum:
    """Garg et al.'s curriculum: the active dimension and prompt length grow during
    training.

    At step t the active dimension is min(dims_end, dims_start + dims_increment * (t //
    dims_interval)), and the number of points likewise. :meth:`garg` is their preset
    (dims 5 -> 20, +1 every 2000 steps; points 11 -> 41, +2 every 2000 steps).
    """

    dims_start: int
    dims_end: int
    points_start: int
    points_end: int
    dims_increment: int = 1
    dims_interval: int = 2000
    points_increment: int = 2
    points_interval: int = 2000

    def __post_init__(self) -> None:
        for name in (
            "dims_start",
            "dims_end",
            "points_start",
            "points_end",
            "dims_interval",
            "points_interval",
        ):
            checks.positive_int(name, getattr(self, name))
        checks.nonnegative_int("dims_increment", self.dims_increment)
        checks.nonnegative_int("points_increment", self.points_increment)
        if self.dims_start > self.dims_end:
            raise ValueError(
                f"dims_start must be <= dims_end = {self.dims_end}, got "
                f"{self.dims_start}"
            )
        if self.points_start > self.points_end:
            raise ValueError(
                f"points_start must be <= points_end = {self.points_end}, got "
                f"{self.points_start}"
            )

    @classmethod
    def garg(cls) -> Curriculum:
        """Garg et al.'s preset for d = 20, n = 41."""
        return cls(dims_start=5, dims_end=20, points_start=11, points_end=41)

    def at(self, step: int) -> tuple[int, int]:
        """``(n_dims, n_points)`` active at ``step`` (0-based)."""
        dims = min(
            self.dims_end,
            self.dims_start + self.dims_increment * (step // self.dims_interval),
        )
        points = min(
            self.points_end,
            self.points_start + self.points_increment * (step // self.points_interval),
        )
        return dims, points


CURRICULUM_PRESETS: dict[str, Callable[[], Curriculum]] = {"garg": Curriculum.garg}
LR_SCHEDULES = ("cosine", "constant", "wsd")
# Fields that may change when a run is resumed: they decide where and how fast it runs,
# not what it learns.
RESUMABLE_CHANGES = frozenset(
    {
        "device",
        "threads",
        "autocast",
        "cuda_graph",
        "log_every",
        "eval_every",
        "eval_batch",
        "checkpoint_every",
    }
)
# Fields that may change when a run is resumed if every step already taken keeps its
# learning rate (for example a constant-rate run extended to more steps, its decay moved
# to the new end): the run is then the one its new config trains from scratch. meta.json
# lists each such change under "schedule_changes".
SCHEDULE_FIELDS = ("steps", "lr_schedule", "decay_fraction", "lr_floor", "warmup_steps")
MAX_THREADS = (
    4096  # torch takes a C int; more threads than this is a typo, not a machine
)
# The largest batch of inputs a step or an evaluation draws: 2^28 numbers (1 GiB in
# float32), 10^4 times the paper preset's; more is a typo that would fail to allocate
# with a traceback, so it is refused where the config enters.
MAX_BATCH_ELEMENTS = 2**28


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. The defaults are the book's laptop setting
    (configs/README.md).

    * ``model``: ``{"name": "gpt" | "lsa" | "reduced_lsa" | "linear_transformer",
      **options}`` (:func:`icl_lib.models.make_model`; :meth:`from_dict` and
      :meth:`replace` also take ``{"preset": "laptop"}``); ``task``: ``{"name": ...,
      **options}`` (:func:`icl_lib.tasks.make_task`).
    * ``n_dims``, ``n_points``: the (largest) prompt shape; every batch has this shape.
    * ``lr`` with ``warmup_steps`` of linear warm-up, then ``lr_schedule`` ``"cosine"``
      (a half cosine from ``lr`` that would reach ``lr_floor * lr`` one step after the
      last), ``"constant"``, or ``"wsd"`` (warm-up, stable, decay: constant, then a
      linear fall to ``lr_floor * lr`` over the last ``decay_fraction`` of the steps, so
      that learning is never slowed before the end). AdamW with ``betas`` and decoupled
      ``weight_decay`` on matrices only.
    * ``grad_clip``: global gradient-norm clipping (0 = off). ``curriculum``: a
      :class:`Curriculum` or None (:meth:`from_dict` and :meth:`replace` also take
      ``"garg"`` or a dict of its fields).
    * ``log_every`` (train metrics), ``eval_every`` (0 = at the end only) on
      ``eval_batch`` fixed prompts, ``checkpoint_every`` (0 = at the end only).
    * ``init_from``: None (a fresh initialisation from ``seed``), or a committed run's
      name or a run directory whose final weights start this run: a warm start, a
      departure from training from scratch that a chapter must disclose. Its model,
      ``n_dims`` and ``n_points`` must be this config's; ``meta.json`` records the
      weights' SHA-256.
    * ``device``: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``;
      ``threads``: CPU threads, pinned during the run (results are bit-identical only
      for the same count); ``autocast``: bf16 on CUDA (never on the CPU);
      ``cuda_graph``: capture the step in a CUDA graph (CUDA only; opt-in, see
      :mod:`icl_lib.cuda_graph`).
    """

    model: dict = field(default_factory=lambda: models.model_spec({"preset": "laptop"}))
    task: dict = field(default_factory=lambda: {"name": "linear"})
    n_dims: int = 5
    n_points: int = 11
    batch_size: int = 256
    steps: int = 1500
    lr: float = 3e-3
    warmup_steps: int = 200
    lr_schedule: str = "cosine"
    lr_floor: float = 0.0
    decay_fraction: float = 0.2
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    curriculum: Curriculum | None = None
    init_from: str | None = None
    log_every: int = 50
    eval_every: int = 250
    eval_batch: int = 1024
    checkpoint_every: int = 500
    device: str = "auto"
    threads: int = 1
    autocast: bool = True
    cuda_graph: bool = False

    def __post_init__(self) -> None:
        """Check every field, once, without building the model or drawing from the task.
        The fields must be typed as runs store them; :meth:`from_dict` and
        :meth:`replace` also accept the loose spellings of a TOML file or a chapter
        (betas as a list, a model preset, a curriculum's name or table) and write them
        out first."""
        for name in (
            "n_dims",
            "n_points",
            "batch_size",
            "steps",
            "log_every",
            "eval_batch",
            "threads",
        ):
            checks.positive_int(name, getattr(self, name))
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed"):
            checks.nonnegative_int(name, getattr(self, name))
        if self.threads > MAX_THREADS:
            raise ValueError(
                f"threads must be a positive integer <= {MAX_THREADS}, got "
                f"{self.threads}"
            )
        for name in ("batch_size", "eval_batch"):
            elements = getattr(self, name) * self.n_points * self.n_dims
            if elements > MAX_BATCH_ELEMENTS:
                raise ValueError(
                    f"{name} x n_points x n_dims must be at most 2**28 (1 GiB of "
                    f"float32 inputs), got {getattr(self, name)} x {self.n_points} x "
                    f"{self.n_dims} = {elements:.2e}"
                )
        checks.positive_float("lr", self.lr)
        checks.unit_interval("lr_floor", self.lr_floor)
        checks.unit_interval("decay_fraction", self.decay_fraction)
        checks.choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        checks.nonnegative_float("weight_decay", self.weight_decay)
        checks.nonnegative_float("grad_clip", self.grad_clip)
        for name in ("autocast", "cuda_graph"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(
                    f"{name} must be true or false, got {getattr(self, name)!r}"
                )
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            raise ValueError(
                f"betas must be a tuple (beta1, beta2), got {self.betas!r} "
                "(TrainConfig.from_dict and replace accept a list)"
            )
        for i, beta in enumerate(self.betas):
            checks.unit_interval(f"betas[{i}]", beta)
        if max(self.betas) >= 1:
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        parse_device(self.device)
        if self.init_from is not None and (
            not isinstance(self.init_from, str) or not self.init_from.strip()
        ):
            raise ValueError(
                "init_from must be a run name or directory (a non-empty string), got "
                f"{self.init_from!r}"
            )

        if not isinstance(self.model, Mapping) or "preset" in self.model:
            raise ValueError(
                "model must be a table with a 'name' and no 'preset', got "
                f"{self.model!r} (a preset is written out by TrainConfig.from_dict, "
                "replace or models.model_spec)"
            )
        for name in ("model", "task"):
            try:
                json.dumps(getattr(self, name))
            except (TypeError, ValueError):
                raise ValueError(
                    f"{name} must hold plain values (numbers, strings, lists, tables)"
                ) from None
        model_name, _ = models.check_model_spec(self.model, self.n_dims, self.n_points)

        if not isinstance(self.task, Mapping) or "name" not in self.task:
            raise ValueError(f"task must be a table with a 'name', got {self.task!r}")
        try:
            # options that do not fit n_dims (sparsity k > d)
            check_fits(make_task(**self.task), self.n_dims)
        except ValueError as error:
            raise ValueError(f"task: {error}") from None

        if self.curriculum is not None:
            if not isinstance(self.curriculum, Curriculum):
                raise ValueError(
                    f"curriculum must be None or a Curriculum, got {self.curriculum!r} "
                    "(TrainConfig.from_dict and replace accept "
                    f"{list(CURRICULUM_PRESETS)} or a table)"
                )
            if self.curriculum.dims_end > self.n_dims:
                raise ValueError(
                    f"curriculum.dims_end = {self.curriculum.dims_end} exceeds n_dims "
                    f"= {self.n_dims}"
                )
            if self.curriculum.points_end > self.n_points:
                raise ValueError(
                    f"curriculum.points_end = {self.curriculum.points_end} exceeds "
                    f"n_points = {self.n_points}"
                )
        check_points_curriculum(
            self,
            models.predicts_every_position(model_name),
            f"model.name = {model_name!r}",
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Build from a plain dict (a parsed TOML file, or :meth:`to_dict`'s output);
        unknown keys are errors. The loose spellings are written out here
        (:func:`typed_fields`)."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"a config must be a table (dict), got {type(data).__name__}"
            )
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; accepted: {accepted}")
        return cls(**typed_fields(data))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON- and ``weights_only``-safe); ``from_dict(to_dict())`` gives
        the same config."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["betas"] = list(self.betas)
        data["curriculum"] = (
            dataclasses.asdict(self.curriculum) if self.curriculum is not None else None
        )
        return json.loads(json.dumps(data))  # deep copy into plain types

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (loose spellings accepted, as by
        :meth:`from_dict`; checked again)."""
        return dataclasses.replace(self, **typed_fields(changes))


def typed_fields(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the loose spellings of a TOML table or a chapter written out as
    :class:`TrainConfig` stores them: ``betas`` a tuple, a model preset written out
    (:func:`icl_lib.models.model_spec`), ``task`` a copy and ``curriculum`` a
    :class:`Curriculum` (:func:`parse_curriculum`). Values are checked by the config
    itself."""
    data = dict(data)
    if isinstance(data.get("betas"), list):
        data["betas"] = tuple(data["betas"])
    if isinstance(data.get("model"), Mapping):
        data["model"] = models.model_spec(data["model"])
    if isinstance(data.get("task"), Mapping):
        data["task"] = dict(data["task"])
    if "curriculum" in data:
        data["curriculum"] = parse_curriculum(data["curriculum"])
    return data


def parse_curriculum(value: Curriculum | str | Mapping | None) -> Curriculum | None:
    """A config's ``curriculum``: None, a :class:`Curriculum`, a preset's name
    (``"garg"``) or a table of its fields."""
    if isinstance(value, str):
        checks.choice("curriculum", value, tuple(CURRICULUM_PRESETS))
        return CURRICULUM_PRESETS[value]()
    if isinstance(value, Mapping):
        accepted = [f.name for f in dataclasses.fields(Curriculum)]
        unknown = sorted(set(value) - set(accepted))
        if unknown:
            raise ValueError(
                f"unknown curriculum field(s) {unknown}; accepted: {accepted}"
            )
        try:
            return Curriculum(**value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"curriculum.{error}") from None
    if value is not None and not isinstance(value, Curriculum):
        raise ValueError(
            f"curriculum must be None, {list(CURRICULUM_PRESETS)} or a table, got "
            f"{value!r}"
        )
    return value


def check_points_curriculum(
    config: TrainConfig, every_position: bool, model: str
) -> None:
    """Refuse a curriculum over points for a model that predicts the query only
    (``every_position`` False): its loss reads the last position, which a shorter prompt
    would leave empty. ``model`` names it in the message."""
    if (
        config.curriculum is not None
        and config.curriculum.points_start < config.n_points
        and not every_position
    ):
        raise ValueError(
            "curriculum: a curriculum over points needs a model that predicts at every "
            f"position ('gpt'); {model} predicts the query only (set points_start = "
            "points_end = n_points)"
        )


def load_config(path: str | Path) -> TrainConfig:
    """Read a TOML experiment config (see ``configs/``)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    with path.open("rb") as file:
        try:
            data = tomllib.load(file)
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"{path}: invalid TOML: {error}") from None
    return TrainConfig.from_dict(data)


def learning_rate(config: TrainConfig, step: int) -> float:
    """The learning rate of step ``step`` (0-based): linear warm-up, then cosine to
    ``lr_floor * lr``, constant, or constant followed by a linear decay to ``lr_floor *
    lr`` over the last ``decay_fraction`` of the steps (wsd)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "wsd":
        decay_steps = config.decay_fraction * config.steps
        remaining = config.steps - step  # 1 at the last step
        if remaining > decay_steps:
            return config.lr
        floor = config.lr_floor * config.lr
        return floor + (config.lr - floor) * remaining / decay_steps
    progress = min(
        1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    )
    floor = config.lr_floor * config.lr
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def derive_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one random stream of a run ("init", "train",
    "eval", "global")."""
    return (
        int.from_bytes(
            hashlib.sha256(f"{seed}/{stream}".encode()).digest()[:8], "little"
        )
        >> 1
    )
