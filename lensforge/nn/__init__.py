"""Shared building blocks for DiT plugins.

* :mod:`lensforge.nn.attention` — variable-length block-diagonal attention backends (kind ``attention``).
* :mod:`lensforge.nn.rope` — multi-axis interleaved-pair RoPE (centred image grid, text after it).
* :mod:`lensforge.nn.norms` — RMSNorm, SwiGLU, affine-free LayerNorm.
* :mod:`lensforge.nn.modulation` — timestep sinusoid/embedding, adaLN modulation, ``AdaLayerNormContinuous``.
"""
