"""Flow-matching sampling: Lens's σ schedules (:mod:`.schedule`) and the packed CFG sampler (:mod:`.sampler`).

Import the submodules directly (``from lensforge.sampling.sampler import generate``); this package
stays import-light.
"""
