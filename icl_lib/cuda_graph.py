"""The training step captured once in a CUDA graph and replayed: an opt-in wrapper
(``cuda_graph = true``).

Off by default: the eager step is what a run gets, on the CPU and on CUDA. The wrapper
has not yet been measured against the eager path on a GPU (no GPU so far); turn it on
only where a measurement shows it pays and gives the eager step's numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


class CudaGraphStep:
    """Run ``step`` eagerly ``warmup`` times on a side stream, then capture it once in a
    CUDA graph and replay it.

    Each call is one training step (warm-up calls included). Shapes are static for the
    whole run, and everything that changes between steps (learning rate, curriculum)
    lives in device tensors that are filled in place. The data generator is registered
    with the graph, so every replay draws fresh prompts. If the capture fails (for
    example a task that copies from the host inside the step), it warns and stays eager.
    """

    def __init__(
        self,
        step: Callable[[], None],
        optimizer: torch.optim.Optimizer,
        generator: torch.Generator,
        device: torch.device,
        warmup: int = 3,
    ) -> None:
        self.step, self.optimizer, self.generator, self.device, self.warmup = (
            step,
            optimizer,
            generator,
            device,
            warmup,
        )
        self.side_stream = torch.cuda.Stream(device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0
        self.failed: str | None = None

    @property
    def status(self) -> str:
        """What ``meta.json`` records as ``cuda_graph``."""
        return (
            "captured"
            if self.graph is not None
            else (self.failed or "not yet captured")
        )

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if self.failed is not None:
            self.step()
            return
        if self.calls < self.warmup:
            main_stream = torch.cuda.current_stream(self.device)
            self.side_stream.wait_stream(main_stream)
            with torch.cuda.stream(self.side_stream):
                self.step()
            main_stream.wait_stream(self.side_stream)
            self.calls += 1
            return
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.device(self.device):
                graph.register_generator_state(self.generator)
            # Gradients set to None, so that the captured backward allocates them from
            # the graph's pool.
            self.optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                self.step()
        # any capture failure falls back to eager steps
        except Exception as error:  # noqa: BLE001
            self.failed = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"CUDA graph capture failed, training on without it: {self.failed}",
                stacklevel=2,
            )
            torch.cuda.synchronize(self.device)
            self.step()
            return
        self.graph = graph
        graph.replay()  # capturing does not run the step: run the captured one now
