"""icl_lib: the helper library of the executable textbook on in-context learning.

Modules, one concern each. Imports flow one way: checks/devices ->
samplers/tasks/prompts -> baselines -> evaluation -> plotting, and
samplers/tasks/prompts -> models -> checkpoints, config, batches -> runs -> train;
theory imports models only for their initialisation.

* ``samplers``: covariates x ~ N(0, c^2 Lambda).
* ``tasks``: function classes (dense, sparse, noisy linear, a finite pool of linear
  tasks, ReLU nets, sinusoids, mixtures, convex combinations, in-context linear
  classification).
* ``prompts``: prompt encodings (Garg et al.'s interleaved tokens, the pair format, the
  LSA embedding).
* ``baselines``: least squares, ridge/Bayes, lasso, oracle, k-NN, averaging, one-step
  GD, Bayes for mixtures, the posterior mean over a finite pool of tasks (dMMSE).
* ``evaluation``: normalised error curves with bootstrap bands.
* ``shifts``: Garg et al.'s out-of-distribution prompts (skewed covariance, noisy
  labels, orthants, orthogonal query, half subspace, scaled inputs and outputs).
* ``evaluate``: a model and the baselines on shared prompts, stored as result files with
  their provenance (``python -m icl_lib.evaluate RUN --task NAME --out
  results/NAME.json``).
* ``plotting``: the house style.
* ``models``: linear self-attention (Zhang-Frei-Bartlett, full and reduced), von
  Oswald's linear transformer, a GPT-2-style decoder (softmax or momentum attention).
* ``checkpoints``: atomic saves, run metadata, and ``load_model(name)`` for the
  chapters.
* ``theory``: Zhang-Frei-Bartlett's linear-attention theory in sympy (Isserlis moments,
  the population loss, its global minimum Gamma^{-1}, the gradient flow) and its numeric
  counterparts.
* ``dual_form``: attention's dual form (zero-shot weights plus the demonstrations'
  update), SGD on a linear layer as linear attention, von Oswald et al.'s weights for K
  steps of (preconditioned) gradient descent.
* ``finetuning``: zero-shot, in-context and key/value fine-tuning traces of the GPT, and
  Dai et al.'s metrics (Rec2FTP, SimAOU, SimAM, Kendall) with their random-update
  control.
* ``interrupts``: Ctrl-C on the command lines (one line, even while torch is still being
  imported).
* ``config``: a training run's config (``TrainConfig``, Garg et al.'s ``Curriculum``),
  learning-rate schedules, seeds.
* ``batches``: the prompts a training step or a held-out evaluation draws, the masked
  loss, the held-out metrics.
* ``runs``: a run directory: resume, the finished-run test, the files a run writes.
* ``cuda_graph``: the training step captured in a CUDA graph, opt-in
  (``cuda_graph = true``).
* ``train``: the one training loop (``python -m icl_lib.train CONFIG``), Triton-free,
  CPU or CUDA.
"""

__version__ = "0.1.0"
