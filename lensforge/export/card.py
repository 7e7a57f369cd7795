"""The ``README.md`` model card of an exported folder: what it is, how it was trained, how to load it."""

from __future__ import annotations

from typing import Any


def _recipe_summary(cfg: Any) -> list[str]:
    if cfg is None:
        return ["- recipe: not recorded (exported from built models)"]
    d = cfg.data
    t = cfg.trainer
    lines = [
        f"- run: `{cfg.name}` (seed {cfg.seed}), stage `{cfg.stage.name}`",
        f"- data: source `{d.source.name}`, caption field `{d.captions.field}`"
        + (f" (mix {dict(d.captions.mix)})" if d.captions.mix else "")
        + f", caption dropout {d.captions.dropout}",
        (f"- resolutions: base {list(d.resolution.base_resolutions)} px, aspect ratios {', '.join(d.resolution.aspect_ratios)}; "
        f"mixed sizes packed into every batch up to {d.packing.token_budget} tokens"),
        (f"- optimisation: AdamW lr {cfg.optim.lr}, weight decay {cfg.optim.weight_decay}, warmup {cfg.optim.warmup_steps}, "
        f"{cfg.optim.schedule} schedule, {t.max_steps} steps"),
        f"- trainer: strategy {t.strategy}, {t.devices} device(s) × {t.num_nodes} node(s), precision {t.precision}",
    ]
    if cfg.init_from:
        lines.append(f"- initialised from `{cfg.init_from}`")
    return lines


def model_card(
    records: dict[str, dict[str, Any]],
    *,
    recipe_config: Any = None,
    official: bool,
    source: str | None = None,
    num_params: int | None = None,
    inference: dict[str, Any] | None = None,
) -> str:
    """Markdown model card with a Hugging Face YAML header (``inference``: the sampling defaults it recommends)."""
    inf = inference or {"steps": 20, "guidance_scale": 4.0}
    steps, cfg = int(inf["steps"]), float(inf["guidance_scale"])
    turbo = inf.get("variant") == "turbo"
    name = getattr(recipe_config, "name", None) or "lensforge-model"
    comps = "\n".join(
        f"| {role} | `{r['plugin']}` | `{_short(r['config'])}` |" for role, r in records.items()
    )
    layout = (
        "the official Lens layout (`LensPipeline`: `LensTransformer2DModel` with the official config and key "
        "layout, `AutoencoderKLFlux2`, GPT-OSS text encoder); it loads wherever microsoft/Lens loads"
        if official
        else "the diffusers folder layout; `model_index.json` carries a `_lensforge` entry naming each "
        "component's plugin and configuration so lensforge can rebuild it"
    )
    params = f"{num_params:,}" if num_params is not None else "unknown"
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "tags: [lensforge, text-to-image, flow-matching, mmdit]",
        "---",
        "",
        f"# {name}",
        "",
        ("A Lens-style text-to-image model (MMDiT + flow matching on VAE latents, conditioned on "
        "multi-layer text-encoder hidden states) trained with lensforge."),
        "",
        f"Denoiser parameters: {params}. Folder layout: {layout}.",
        "",
        "| component | plugin | configuration |",
        "|---|---|---|",
        comps,
        "",
        "## Training",
        "",
        *_recipe_summary(recipe_config),
    ]
    if source:
        lines.append(f"- exported from `{source}`")
    lines += [
        "",
        "The full resolved recipe is in `lensforge.json`.",
        "",
        "## Sampling",
        "",
        ("Flow matching, velocity `noise − x0`; `scheduler/` is diffusers' `FlowMatchEulerDiscreteScheduler` "
        "with Lens's dynamic shift (the empirical mu of the token count and step count); classifier-free "
        "guidance is rescaled per token to the conditional prediction's norm."),
        "",
        *([("**Turbo (distilled):** sample it in %d steps without CFG (guidance 1.0: one DiT call per step), as "
             "Lens-Turbo; the scheduler config is Lens's own (the σ at that step count follow from it and the image size). "
             "`lensforge sample` defaults to these settings for this folder (`lensforge.json` → `inference`)." % steps), ""]
          if turbo else []),
        "```bash",
        f"lensforge sample THIS_FOLDER \"a red cube on a blue sphere\" --height 512 --width 768 --steps {steps} --guidance-scale {cfg:g}",
        "```",
        "",
        "```python",
        "from lensforge.export import load_folder",
        "from lensforge.sampling.sampler import generate",
        "dit, vae, text_encoder = load_folder(\"THIS_FOLDER\")",
        f"images = generate(dit, vae, text_encoder, [\"a red cube\"], [(512, 512)], steps={steps}, guidance_scale={cfg})",
        "```",
        "",
        "To continue training from it, name the folder in a recipe: `init_from: THIS_FOLDER`.",
        "",
    ]
    return "\n".join(lines)


def _short(cfg: dict[str, Any], limit: int = 120) -> str:
    s = ", ".join(f"{k}={v}" for k, v in cfg.items() if v not in (None, {}, []))
    return s if len(s) <= limit else s[: limit - 1] + "…"
