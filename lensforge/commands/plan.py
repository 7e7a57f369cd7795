"""``lensforge plan RECIPE [k=v …]``: parameters per component and a per-GPU memory estimate.

Nothing real is allocated: every model the recipe names is built on the ``meta`` device (shapes
and dtypes only), so the 3.8B Lens recipe plans in seconds on a laptop. Weights folders that are
missing here (GPT-OSS, FLUX.2 VAE) make that component "unknown (folder missing)", never an error.

Memory model (per GPU, bytes; ``N`` = trainable DiT parameters, ``P`` = shard factor = world
size ``devices × num_nodes`` under ``fsdp2``, else 1; ``b_p`` = bytes per stored parameter:
4 for ``32-true``/``*-mixed`` (fp32 master weights), 2 for ``bf16-true``/``16-true``;
``b_c`` = bytes of the compute dtype: 2 for bf16/fp16 precisions, else 4):

* weights           ``N·b_p / P``
* gradients         ``N·b_p / P``                 (same dtype as the parameters)
* optimizer state   ``8·N / P``                    (AdamW: ``exp_avg`` + ``exp_avg_sq`` in fp32)
* EMA               ``4·N / P``                    (when the stage keeps an EMA; fp32, sharded like the weights)
* fsdp2 buffers     ``3·U·b_c``                    (``U`` = parameters of the largest FSDP unit: the
  current and the prefetched all-gathered unit plus one unsharded gradient before reduce-scatter)
* ddp buckets       ``N·b_p``                      (DDP's flat gradient buckets)
* autocast cache    ``N·b_c``                      (``*-mixed`` without fsdp2: low-precision weight copies
  autocast keeps for the forward)
* activations       measured, not guessed: one forward of the real DiT code on the meta device over a
  packed batch of ``token_budget`` tokens (samples at the largest base resolution, 1:1, each with
  ``text_tokens_estimate`` text tokens) while ``saved_tensors_hooks`` sum the bytes autograd keeps
  for backward. Attention is counted as a memory-efficient kernel (xformers/flash: q, k, v, output and
  an fp32 log-sum-exp, no ``N²`` matrix). With activation checkpointing only the inputs of each FSDP
  unit (transformer block) are kept, plus the largest unit's activations live during its recompute:
  ``A_ckpt = A_total − Σ_u A_u + Σ_u inputs_u + max_u A_u``.
* frozen encoders   VAE and text-encoder parameters × their bytes (bf16 for folders read from disk),
  "unknown" when their weights folder is missing.
* runtime overhead  1.5 GiB (CUDA context, NCCL, allocator fragmentation).

The verdict compares the total with the 80 GB H100's usable memory (79.1 GiB).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lensforge.commands import add_recipe_arguments
from lensforge.distributed.env import planned_world_size
from lensforge.distributed.memory import bytes_per_param, is_low_precision, stage_keeps_ema, training_state_bytes

log = logging.getLogger("lensforge.plan")

GiB = 1024**3
H100_USABLE_GIB = 79.1
RUNTIME_OVERHEAD = int(1.5 * GiB)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON instead of a table")


# --------------------------------------------------------------------------------------------
# parameters


@dataclass
class ComponentCount:
    """Parameters of one model component (``count`` None = unknown, with ``note`` saying why)."""

    role: str
    plugin: str
    count: int | None
    trainable: bool
    note: str = ""
    bytes_per_param: int = 4
    largest_unit: int = 0
    num_units: int = 0


def safetensors_parameter_count(folder: Path) -> int:
    """Number of tensor elements in every ``*.safetensors`` under ``folder``, read from the headers only."""
    total = 0
    for f in sorted(folder.rglob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            total += math.prod(meta["shape"]) if meta["shape"] else 1
    return total


def build_on_meta(ref: Any) -> torch.nn.Module:
    """Build a plugin from its recipe node on the meta device (no memory, no weights read)."""
    with torch.device("meta"):
        return ref.build()


def count_component(role: str, ref: Any, *, trainable: bool) -> tuple[ComponentCount, torch.nn.Module | None]:
    """Count parameters of one component: meta build, or safetensors headers of its folder."""
    from lensforge.export.common import plugin_path, resolve_plugin_path

    path = plugin_path(ref)
    if path is not None:
        folder = resolve_plugin_path(path)
        if folder is None or not folder.exists():
            return ComponentCount(role, ref.name, None, trainable, f"unknown (folder missing: {path})"), None
        n = safetensors_parameter_count(folder)
        if n:
            return ComponentCount(role, ref.name, n, trainable, f"from safetensors headers in {folder}", _dtype_bytes(ref)), None
    note = ""
    try:
        model = build_on_meta(ref)
    except Exception as e:  # noqa: BLE001 - some plugins compute buffers on the CPU at build time
        if path is not None:
            return ComponentCount(role, ref.name, None, trainable, f"unknown ({type(e).__name__}: {e})"), None
        log.info("plan: %s '%s' does not build on the meta device (%s); building it on the CPU", role, ref.name, e)
        try:
            model = ref.build()
            note = "built on the CPU (not meta-buildable)"
        except Exception as e2:  # noqa: BLE001 - reported, not fatal
            return ComponentCount(role, ref.name, None, trainable, f"unknown ({type(e2).__name__}: {e2})"), None
    n = sum(p.numel() for p in model.parameters())
    units = list(model.fsdp_units()) if callable(getattr(model, "fsdp_units", None)) else []
    largest = max((sum(p.numel() for p in u.parameters()) for u in units), default=0)
    bpp = max((p.element_size() for p in model.parameters()), default=4)
    return ComponentCount(role, ref.name, n, trainable, note, bpp, largest, len(units)), model


def _dtype_bytes(ref: Any) -> int:
    """Bytes per weight of a folder-backed plugin: its config's ``dtype`` (bf16 when it has none)."""
    dtype = str(getattr(ref.config, "dtype", "bfloat16") or "bfloat16")
    return 4 if dtype in ("float32", "fp32", "32") else 2


# --------------------------------------------------------------------------------------------
# activations (measured on the meta device)


class _MetaEfficientAttention(torch.autograd.Function):
    """Stands in for xformers/flash attention: saves q, k, v, out and an fp32 log-sum-exp."""

    @staticmethod
    def forward(ctx, q, k, v):  # type: ignore[override]
        out = torch.empty_like(q)
        lse = torch.empty(q.shape[0], q.shape[1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]  # never run: meta planning only
        q, k, v, _, _ = ctx.saved_tensors
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)


class _MetaAttentionBackend:
    """Callable with the :class:`AttentionBackend` signature, for meta-device planning."""

    def __call__(self, q, k, v, seqlens):
        return _MetaEfficientAttention.apply(q, k, v)

    def available(self, device):
        return True, ""


def _swap_attention(model: torch.nn.Module) -> None:
    from lensforge.interfaces.models import AttentionBackend

    for mod in model.modules():
        for name, val in list(vars(mod).items()):
            if isinstance(val, AttentionBackend):
                setattr(mod, name, _MetaAttentionBackend())


@dataclass
class ActivationEstimate:
    """Bytes autograd keeps for one forward at the token budget."""

    total: int
    checkpointed: int
    num_samples: int
    image_tokens: int
    text_tokens: int
    note: str = ""


def measure_activations(
    dit: torch.nn.Module,
    *,
    latent_channels: int,
    text_dims: tuple[int, ...],
    token_budget: int,
    tokens_per_image: int,
    text_tokens: int,
    dtype: torch.dtype,
) -> ActivationEstimate:
    """Run ``dit`` once on the meta device and sum the bytes saved for backward (see module doc)."""
    from lensforge.interfaces.batch import PackedBatch, TextFeatures

    per_sample = tokens_per_image + text_tokens
    n = max(1, token_budget // per_sample)
    side = max(1, math.isqrt(tokens_per_image))
    h, w = side, max(1, tokens_per_image // side)
    dit = dit.to(dtype)
    _swap_attention(dit)
    units = list(dit.fsdp_units()) if callable(getattr(dit, "fsdp_units", None)) else []
    # the DiT's own checkpointing would hide what we measure: plan both ways from one plain pass
    if hasattr(dit, "activation_checkpointing"):
        dit.activation_checkpointing = False
    state = {"unit": None, "total": 0}
    per_unit: dict[int, int] = {}
    unit_inputs: dict[int, int] = {}
    seen_storage: set[int] = set()

    def nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def pack(t: torch.Tensor):
        if isinstance(t, torch.nn.Parameter) or t.requires_grad and t.is_leaf:
            return t  # parameters are counted as weights, not activations
        key = id(t)
        if key not in seen_storage:
            seen_storage.add(key)
            b = nbytes(t)
            state["total"] += b
            if state["unit"] is not None:
                per_unit[state["unit"]] = per_unit.get(state["unit"], 0) + b
        return t

    def pre(i):
        def hook(mod, args, kwargs=None):
            state["unit"] = i
            unit_inputs[i] = sum(nbytes(a) for a in args if isinstance(a, torch.Tensor))
        return hook

    def post(i):
        def hook(mod, args, out):
            state["unit"] = None
        return hook

    handles = []
    for i, u in enumerate(units):
        handles.append(u.register_forward_pre_hook(pre(i)))
        handles.append(u.register_forward_hook(post(i)))
    try:
        meta = torch.device("meta")
        tokens = torch.empty(n * h * w, latent_channels, dtype=dtype, device=meta)
        text = TextFeatures(layers=[torch.empty(n * text_tokens, d, dtype=dtype, device=meta) for d in text_dims],
                            lengths=torch.full((n,), text_tokens, dtype=torch.long))
        batch = PackedBatch(img_tokens=tokens, img_shapes=torch.tensor([[h, w]] * n),
                            sigmas=torch.empty(n, dtype=dtype, device=meta), text=text)
        if True:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                out = dit(batch)
                # the loss keeps the prediction and the target alive
                state["total"] += 2 * nbytes(out)
    finally:
        for hdl in handles:
            hdl.remove()
    total = state["total"]
    if units:
        ckpt = total - sum(per_unit.values()) + sum(unit_inputs.values()) + max(per_unit.values(), default=0)
    else:
        ckpt = total
    return ActivationEstimate(total, ckpt, n, n * h * w, n * text_tokens)


# --------------------------------------------------------------------------------------------
# the plan


@dataclass
class MemoryPlan:
    """Per-GPU bytes by item (None = unknown) and the inputs that produced them."""

    strategy: str
    world_size: int
    shard: int
    precision: str
    activation_checkpointing: bool
    items: dict[str, int | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def known_total(self) -> int:
        return sum(v for v in self.items.values() if v is not None)

    @property
    def complete(self) -> bool:
        return all(v is not None for v in self.items.values())


def make_plan(recipe: Any) -> dict[str, Any]:
    """Everything ``lensforge plan`` prints, as plain data."""
    cfg = recipe.config
    m = cfg.model
    dit_count, dit = count_component("dit", m.dit, trainable=True)
    vae_count, _ = count_component("vae", m.vae, trainable=False)
    te_count, _ = count_component("text_encoder", m.text_encoder, trainable=False)

    tr = cfg.trainer
    world, world_note = planned_world_size(tr)
    strategy = tr.strategy
    if strategy == "auto":
        strategy = "ddp" if world > 1 else "single"
    shard = world if strategy == "fsdp2" else 1
    precision = str(tr.precision)
    low = is_low_precision(precision)
    b_c = 2 if low else 4
    b_p = bytes_per_param(precision)
    ac = bool(tr.activation_checkpointing or getattr(m.dit.config, "activation_checkpointing", False))

    plan = MemoryPlan(strategy, world, shard, precision, ac)
    if world_note:
        plan.notes["world"] = world_note
    N = dit_count.count
    if N is None:
        raise _error(f"cannot count the DiT's parameters: {dit_count.note}")
    plan.items.update(training_state_bytes(N, precision=precision, shard=shard,
                                           ema=stage_keeps_ema(getattr(cfg.stage, "config", None))))
    if strategy == "fsdp2":
        plan.items["fsdp2 gathered units"] = 3 * dit_count.largest_unit * b_c
    elif strategy == "ddp":
        plan.items["ddp gradient buckets"] = N * b_p
    if strategy != "fsdp2" and precision.endswith("-mixed") and low:
        plan.items["autocast weight cache"] = N * b_c

    # activations at the token budget
    dit_spec = m.dit.schema.input_spec(m.dit.config)
    lat = m.vae.schema.latent_spec(m.vae.config)
    budget = cfg.data.packing.token_budget
    act = None
    downsample = lat.downsample if lat is not None else cfg.data.resolution.multiple_of
    if lat is None:
        plan.notes["token size"] = (f"the VAE's token size is unknown here; assumed data.resolution.multiple_of = "
                                    f"{downsample} pixels per token")
    if dit is not None and not all(p.is_meta for p in dit.parameters()):
        dit = None  # built on the CPU: measuring would run real compute
    if dit is not None and dit_spec is not None:
        res = max(cfg.data.resolution.base_resolutions)
        tokens_per_image = (res // downsample) ** 2
        act = measure_activations(
            dit, latent_channels=dit_spec.latent_channels, text_dims=tuple(dit_spec.text_dims), token_budget=budget,
            tokens_per_image=tokens_per_image, text_tokens=cfg.data.packing.text_tokens_estimate,
            dtype=torch.bfloat16 if "bf16" in precision else (torch.float16 if low else torch.float32),
        )
        plan.items["activations"] = act.checkpointed if ac else act.total
        plan.notes["activations"] = (
            f"{act.num_samples} × {res}² samples = {act.image_tokens} image + {act.text_tokens} text tokens "
            f"(budget {budget}); without checkpointing {_gib(act.total)}, with {_gib(act.checkpointed)}"
        )
    else:
        plan.items["activations"] = None
        plan.notes["activations"] = "unknown (the DiT does not build on the meta device or declares no input spec)"

    for c in (vae_count, te_count):
        key = f"frozen {c.role} ({c.plugin})"
        plan.items[key] = None if c.count is None else c.count * c.bytes_per_param
        if c.count is None:
            plan.notes[key] = c.note
    if cfg.data.cache_dir:
        plan.notes["cache"] = f"feature cache {cfg.data.cache_dir}: training reads latents/text features from it"
    plan.items["runtime overhead"] = RUNTIME_OVERHEAD

    total = plan.known_total
    fits = total <= H100_USABLE_GIB * GiB
    verdict = (
        f"{'fits' if fits else 'does NOT fit'} an 80 GB H100 ({_gib(total)} of {H100_USABLE_GIB:.1f} GiB usable"
        + ("" if plan.complete else "; unknown items not counted")
        + ")"
    )
    return {
        "recipe": recipe.path,
        "components": [dataclasses.asdict(c) for c in (dit_count, vae_count, te_count)],
        "strategy": strategy,
        "world_size": world,
        "devices": tr.devices,
        "num_nodes": tr.num_nodes,
        "precision": precision,
        "activation_checkpointing": ac,
        "token_budget": budget,
        "memory_bytes": plan.items,
        "notes": plan.notes,
        "total_bytes": total,
        "complete": plan.complete,
        "fits_h100_80gb": fits,
        "verdict": verdict,
    }


def _error(msg: str) -> Exception:
    from lensforge.errors import LensforgeError

    return LensforgeError(msg)


def _gib(b: int | None) -> str:
    return "unknown" if b is None else f"{b / GiB:.2f} GiB"


def format_plan(p: dict[str, Any]) -> str:
    """The human-readable table."""
    lines = [f"plan for {p['recipe']}", "", "parameters:"]
    for c in p["components"]:
        n = f"{c['count']:,}" if c["count"] is not None else c["note"]
        kind = "trainable" if c["trainable"] else "frozen"
        extra = f"  ({c['note']})" if c["count"] is not None and c["note"] else ""
        lines.append(f"  {c['role']:<13} {c['plugin']:<12} {n:>18}  {kind}{extra}")
    lines += [
        "",
        (f"per-GPU memory: strategy {p['strategy']}, {p['world_size']} GPU(s) "
        f"({p['devices']} × {p['num_nodes']} node(s)), precision {p['precision']}, "
        f"activation checkpointing {'on' if p['activation_checkpointing'] else 'off'}, token budget {p['token_budget']}"),
    ]
    for k, v in p["memory_bytes"].items():
        note = p["notes"].get(k, "")
        val = _gib(v) if v is not None else note or "unknown"
        lines.append(f"  {k:<34} {val:>12}" + (f"  [{note}]" if v is not None and note else ""))
    lines.append(f"  {'total':<34} {_gib(p['total_bytes']):>12}")
    for k in ("world", "token size", "cache"):
        if k in p["notes"]:
            lines.append(f"  note: {p['notes'][k]}")
    lines += ["", p["verdict"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lensforge.recipe import load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    log.info("planning %s on the meta device", args.recipe)
    p = make_plan(recipe)
    if args.json:
        print(json.dumps(p, indent=2, default=str))
    else:
        print(format_plan(p))
    return 0
