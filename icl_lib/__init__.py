"""icl_lib: the helper library of the executable textbook on in-context learning.

Modules, one concern each. Imports flow one way: checks/devices -> samplers/tasks/prompts -> baselines ->
evaluation -> plotting, and samplers/tasks/prompts -> models -> checkpoints -> train; theory imports models only
for their initialisation.

* ``samplers``: covariates x ~ N(0, c^2 Lambda).
* ``tasks``: function classes (dense, sparse, noisy linear, ReLU nets, sinusoids, mixtures, convex combinations).
* ``prompts``: prompt encodings (Garg et al.'s interleaved tokens, the pair format, the LSA embedding).
* ``baselines``: least squares, ridge/Bayes, lasso, oracle, k-NN, averaging, one-step GD, Bayes for mixtures.
* ``evaluation``: normalised error curves with bootstrap bands.
* ``plotting``: the house style.
* ``models``: linear self-attention (Zhang-Frei-Bartlett, full and reduced), von Oswald's linear transformer, a GPT-2-style decoder.
* ``checkpoints``: atomic saves, run metadata, and ``load_model(name)`` for the chapters.
* ``theory``: Zhang-Frei-Bartlett's linear-attention theory in sympy (Isserlis moments, the population loss, its
  global minimum Gamma^{-1}, the gradient flow) and its numeric counterparts.
* ``train``: the one training loop (``python -m icl_lib.train CONFIG``), Triton-free, CPU or CUDA.
"""

__version__ = "0.1.0"
