#!/usr/bin/env python
"""Score distilled students against their teacher in one table (the distillation docs' measurement).

    python tools/turbo_eval.py --teacher runs/tiny_rl --student turbo=runs/tiny_distill \\
        [--student dm_only=runs/distill_ablation/dm_only …] --num-prompts 64 --out runs/eval/turbo

Runs ``lensforge eval`` (same suite, prompts, sizes and seeds for every row) for: each student at its own
sampling defaults (``student_steps`` steps, CFG 1); the teacher at ``--teacher-steps`` with CFG
``--teacher-cfg`` (Lens: 20 steps, CFG 5; the tiny teacher's own sampling: CFG 4); the teacher at the
student's step count with its CFG (the naive baseline) and without CFG (= every student before training).
Writes ``table.md`` / ``table.json`` (mean reward, per attribute, ratio to the teacher's full setting) and
``grids.png`` (the first prompts, one row per setting) under ``--out``; each eval's own folder is kept.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _eval(target: str, steps: int, cfg: float, out: Path, args: argparse.Namespace) -> dict:
    from lensforge.cli import main

    cmd = ["eval", target, "--suite", args.suite, "--steps", str(steps), "--cfg", str(cfg), "--seeds", args.seeds,
           "--out", str(out), "--no-progress", "--no-mlflow", "--no-baseline", "--batch-size", "32"]
    if args.num_prompts:
        cmd += ["--num-prompts", str(args.num_prompts)]
    if args.size:
        cmd += ["--size", args.size]
    rc = main(cmd)
    if rc != 0:
        raise SystemExit(f"lensforge {' '.join(cmd)} failed ({rc})")
    return json.loads((out / "results.json").read_text())


def _summary(results: dict) -> dict:
    """The (only non-baseline) target's summary of an eval's ``results.json``."""
    return next(iter(results["summary"].values()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, help="the teacher's run / checkpoint / export")
    p.add_argument("--student", action="append", required=True, metavar="LABEL=PATH", help="a distilled student (repeat)")
    p.add_argument("--teacher-steps", type=int, default=20)
    p.add_argument("--teacher-cfg", type=float, default=4.0)
    p.add_argument("--student-steps", type=int, default=4)
    p.add_argument("--suite", default="validation")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--seeds", default="0")
    p.add_argument("--size", default=None)
    p.add_argument("--out", default="runs/eval/turbo")
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for spec in args.student:
        label, _, path = spec.partition("=")
        rows.append((f"student {label} ({args.student_steps} steps, CFG 1)", path, args.student_steps, 1.0, f"student_{label}"))
    rows += [
        (f"teacher ({args.teacher_steps} steps, CFG {args.teacher_cfg:g})", args.teacher, args.teacher_steps,
         args.teacher_cfg, "teacher_full"),
        (f"teacher ({args.student_steps} steps, CFG {args.teacher_cfg:g}) — naive", args.teacher, args.student_steps,
         args.teacher_cfg, "teacher_naive"),
        (f"teacher ({args.student_steps} steps, CFG 1) — the student at step 0", args.teacher, args.student_steps,
         1.0, "teacher_naive_cfg1"),
    ]
    table = []
    for label, target, steps, cfg, key in rows:
        summary = _summary(_eval(target, steps, cfg, out / key, args))
        table.append({"row": label, "key": key, "target": target, "steps": steps, "cfg": cfg,
                      "reward": summary.get("reward"), "attributes": summary.get("attributes", {}),
                      "images": summary.get("scored")})
    full = next(r["reward"] for r in table if r["key"] == "teacher_full")
    attrs = sorted({a for r in table for a in r["attributes"]})
    lines = [f"| setting | mean reward | × teacher {args.teacher_steps}-step | " + " | ".join(attrs) + " |",
             "|---|---|---|" + "---|" * len(attrs)]
    for r in table:
        ratio = f"{r['reward'] / full:.3f}" if r["reward"] is not None and full else "—"
        lines.append(f"| {r['row']} | {r['reward']:.3f} | {ratio} | "
                     + " | ".join(f"{r['attributes'].get(a, float('nan')):.3f}" for a in attrs) + " |")
    md = (f"Suite `{args.suite}`, {args.num_prompts} prompts, seeds {args.seeds}; teacher `{args.teacher}`.\n\n"
          + "\n".join(lines) + "\n")
    (out / "table.md").write_text(md)
    (out / "table.json").write_text(json.dumps(table, indent=1))
    _grids(out, [r["key"] for r in table], [r["row"] for r in table])
    print(md)
    print(f"wrote {out / 'table.md'}, {out / 'table.json'}, {out / 'grids.png'}")
    return 0


def _grids(out: Path, keys: list[str], labels: list[str], n: int = 8) -> None:
    """One row per setting: its first ``n`` images (same prompts and seeds), labelled."""
    from PIL import Image

    from lensforge.sampling.sampler import labelled_grid

    rows = [(label.replace("—", "-")[:52], [Image.open(f).convert("RGB") for f in sorted((out / key / "images").rglob("*.png"))[:n]])
            for key, label in zip(keys, labels)]
    if not rows or not rows[0][1]:
        return
    grid = labelled_grid(rows, label_w=330)
    grid.quantize(colors=128).save(out / "grids.png", optimize=True)  # small enough to commit with the docs

if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
