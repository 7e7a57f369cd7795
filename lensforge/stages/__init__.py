"""Training stages (LightningModule systems): ``pretrain`` (:mod:`.pretrain`), later ``rl`` and ``distill``.

Helpers shared by stages: :mod:`.checkpointing` (atomic keep-last-k checkpoints, resume discovery),
:mod:`.ema`, :mod:`.callbacks` (validation sampling), :mod:`.preflight` (can this machine run the
recipe?) and :mod:`.runner` (recipe → ``Trainer.fit``).
"""
