"""Training stages and the trunk they share (see ``README.md`` in this folder).

The trunk: :mod:`.harness` (open a run, fit a stage), :mod:`.roles` (which DiTs a stage holds and
how each is treated), :mod:`.conditioner` (batch → latents + text features), :mod:`.system` (the
base LightningModule: optimizers, EMA, parallelism, RNG and checkpoint state), :mod:`.objectives`
(flow-matching functions), :mod:`.checkpoint_io` (reading checkpoints), :mod:`.checkpointing`
(writing them), :mod:`.callbacks` (validation sampling), :mod:`.preflight` (can this machine run
the recipe?). The stages: :mod:`.pretrain`; later ``rl`` and ``distill``.
"""
