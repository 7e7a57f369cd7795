"""Helpers for plugin authors and lensforge's own tests.

* :mod:`lensforge.testing.contracts` — the contract checks every VAE / text-encoder plugin must
  pass (shape, dtype, determinism, state-dict round trip, freeze) and the ``VAEContract`` /
  ``TextEncoderContract`` pytest mixins.
* :mod:`lensforge.testing.fixtures` — tiny random reference models written to folders without
  network access: ``AutoencoderKLFlux2`` with non-trivial BatchNorm statistics, GPT-OSS with an
  offline harmony tokenizer and chat template, BERT with an offline WordPiece tokenizer.

Nothing heavy is imported by this package itself.
"""
