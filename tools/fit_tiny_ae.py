"""Fit the ``tiny_ae`` codec on the synthetic world and report its reconstruction PSNR.

    python tools/fit_tiny_ae.py --steps 300 --out tiny_ae.safetensors

Prints PSNR (dB, images in [-1, 1]) of the analytic initialisation and of the fitted decoder on
held-out scenes at two sizes, then writes the weights (load them with ``weights: <file>``).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", default=None, help="write the fitted weights here (.safetensors)")
    ap.add_argument("--calibrate", action="store_true", help="re-estimate latent statistics first")
    args = ap.parse_args()

    from lensforge.data.sources.synthetic import SyntheticWorld
    from lensforge_plugins.vae.tiny_ae import TinyAE, psnr

    torch.manual_seed(0)
    world = SyntheticWorld(SyntheticWorld.Config(seed=0))
    held = {s: torch.stack([world.get(90_000 + i, s).image for i in range(32)]) for s in ((128, 128), (64, 96))}
    ae = TinyAE(TinyAE.Config(lr=args.lr))
    if args.calibrate:
        ae.calibrate(torch.stack([world.get(80_000 + i, (args.size, args.size)).image for i in range(64)]))

    def report(tag: str) -> None:
        with torch.no_grad():
            vals = {f"{h}x{w}": round(psnr(ae(x), x), 2) for (h, w), x in held.items()}
        print(f"{tag}: PSNR {vals}", flush=True)

    report("analytic init")
    opt = ae.configure_optimizers()
    t0 = time.time()
    for step in range(args.steps):
        idx = range(step * args.batch, (step + 1) * args.batch)
        x = torch.stack([world.get(i, (args.size, args.size)).image for i in idx])
        loss = ae.reconstruction_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}: mse {loss.item():.5f} ({time.time() - t0:.0f}s)", flush=True)
    report(f"after {args.steps} steps")
    if args.out:
        ae.save_weights(args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
