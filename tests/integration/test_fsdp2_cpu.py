"""FSDP2 ``parallelize`` on CPU with gloo: 2 processes, one AdamW step, losses equal the single-process run.

Each rank gets half of the samples of one packed mixed-resolution batch; the average of the
ranks' per-sample-mean losses equals the single-process loss over all samples, and so does the
loss after one optimizer step (FSDP2 averages the reduce-scattered gradients).
"""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.distributed

WORLD = 2
SHAPES = [(4, 2), (3, 3), (2, 4), (3, 2)]
TXT = [3, 5, 0, 2]


def _model():
    from lensforge_plugins.dit.lens_mmdit import LensMMDiT

    torch.manual_seed(0)
    model = LensMMDiT(LensMMDiT.Config(flavor="tiny", attention="sdpa_loop", zero_init=False, num_layers=2))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-zero modulation/output so every parameter matters
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
    return model


def _data():
    from lensforge.interfaces import PackedBatch, TextFeatures

    g = torch.Generator().manual_seed(2)
    out = []
    for (h, w), n in zip(SHAPES, TXT):
        text = TextFeatures(layers=[torch.randn(n, 32, generator=g) for _ in range(2)], lengths=torch.tensor([n]))
        batch = PackedBatch(img_tokens=torch.randn(h * w, 16, generator=g), img_shapes=torch.tensor([[h, w]]),
                            sigmas=torch.rand(1, generator=g), text=text)
        out.append((batch, torch.randn(h * w, 16, generator=g)))
    return out


def _loss(model, items):
    """Mean over samples of each sample's MSE, computed in one packed forward."""
    from lensforge.interfaces import PackedBatch, TextFeatures

    batch = PackedBatch(
        img_tokens=torch.cat([b.img_tokens for b, _ in items]),
        img_shapes=torch.cat([b.img_shapes for b, _ in items]),
        sigmas=torch.cat([b.sigmas for b, _ in items]),
        text=TextFeatures.cat([b.text for b, _ in items]),
    )
    pred = batch.split_img(model(batch))
    return torch.stack([(p - t).pow(2).mean() for p, (_, t) in zip(pred, items)]).mean()


def _step(model, items):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    loss0 = _loss(model, items)
    loss0.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        loss1 = _loss(model, items)
    return loss0.detach(), loss1


def _worker(rank: int, port: int, out_path: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from lensforge.distributed.fsdp import ParallelizeConfig, parallelize

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        model = parallelize(_model(), mesh, ParallelizeConfig(param_dtype="float32", reduce_dtype="float32"))
        from torch.distributed.tensor import DTensor

        assert all(isinstance(p, DTensor) for p in model.parameters())
        loss0, loss1 = _step(model, _data()[rank::WORLD])
        losses = torch.stack([loss0, loss1])
        dist.all_reduce(losses, op=dist.ReduceOp.SUM)
        losses /= WORLD
        if rank == 0:
            with open(out_path, "w") as f:
                json.dump(losses.tolist(), f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_two_process_step_matches_single_process(tmp_path):
    out = tmp_path / "losses.json"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    dist0, dist1 = json.loads(out.read_text())
    print("fsdp2 losses (before, after step):", dist0, dist1)

    torch.set_num_threads(1)
    ref0, ref1 = _step(_model(), _data())
    assert abs(dist0 - ref0.item()) <= 1e-5 * max(1.0, abs(ref0.item()))
    assert abs(dist1 - ref1.item()) <= 1e-5 * max(1.0, abs(ref1.item()))
    assert abs(ref1.item() - ref0.item()) > 1e-4  # the step changed the model
