"""``parallelize`` configuration (the 2-process FSDP2 run is tests/integration/test_fsdp2_cpu.py)."""

from __future__ import annotations

import pytest
from torch import nn

from lensforge.distributed.fsdp import ParallelizeConfig, parallelize, sharding_units
from lensforge.errors import LensforgeError
from lensforge.recipe.schema import TrainerConfig


def test_config_from_trainer_section():
    cfg = ParallelizeConfig.from_trainer(TrainerConfig(precision="bf16-mixed", activation_checkpointing=True))
    assert (cfg.param_dtype, cfg.reduce_dtype, cfg.activation_checkpointing, cfg.compile) == (
        "bfloat16", "float32", True, False)
    assert ParallelizeConfig.from_trainer(TrainerConfig()).param_dtype == "float32"


def test_sharding_units_found_or_reported():
    class WithBlocks(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

    assert len(sharding_units(WithBlocks())) == 2
    with pytest.raises(LensforgeError, match="no fsdp_units"):
        sharding_units(nn.Linear(2, 2))


def test_bad_dtype_is_a_user_error():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(LensforgeError, match="param_dtype 'bf17'"):
        parallelize(M(), device_mesh=None, cfg=ParallelizeConfig(param_dtype="bf17"))
