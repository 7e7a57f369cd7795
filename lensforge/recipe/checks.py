"""Cross-field checks run after every node validated on its own.

A check is a function ``(config: RecipeConfig) -> list[Problem-like (key, message)]`` registered
with :func:`recipe_check`. Core registers the model-compatibility checks below; stages and
plugins may add their own (a stage plugin can also override ``check_recipe``).
"""

from __future__ import annotations

from typing import Any, Callable

CheckFn = Callable[[Any], "list[tuple[str, str]]"]
_CHECKS: list[CheckFn] = []


def recipe_check(fn: CheckFn) -> CheckFn:
    """Register a cross-field check."""
    _CHECKS.append(fn)
    return fn


def run_checks(config: Any) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for fn in _CHECKS:
        try:
            out.extend(fn(config))
        except Exception as e:  # a broken check must not hide the others
            out.append(("", f"check {fn.__name__} failed: {type(e).__name__}: {e}"))
    stage = getattr(config, "stage", None)
    hook = getattr(getattr(stage, "schema", None), "check_recipe", None)
    if callable(hook):
        try:
            out.extend(hook(config))
        except Exception as e:
            out.append(("stage", f"stage check failed: {type(e).__name__}: {e}"))
    return out


@recipe_check
def model_compatibility(config: Any) -> list[tuple[str, str]]:
    """VAE latent channels and text-encoder widths must match what the DiT expects."""
    model = config.model
    dit = model.dit.schema.input_spec(model.dit.config)
    if dit is None:
        return []
    out = []
    lat = model.vae.schema.latent_spec(model.vae.config)
    if lat is not None and lat.channels != dit.latent_channels:
        out.append((
            "model.vae",
            f"VAE '{model.vae.name}' gives {lat.channels} channels per token but DiT '{model.dit.name}' "
            f"expects {dit.latent_channels}",
        ))
    dims = model.text_encoder.schema.feature_spec(model.text_encoder.config)
    if dims is not None and tuple(dims) != tuple(dit.text_dims):
        out.append((
            "model.text_encoder",
            f"text encoder '{model.text_encoder.name}' gives features {list(dims)} but DiT "
            f"'{model.dit.name}' expects {list(dit.text_dims)}",
        ))
    return out


@recipe_check
def resolution_multiple(config: Any) -> list[tuple[str, str]]:
    """Image sizes must be multiples of the VAE's token size."""
    lat = config.model.vae.schema.latent_spec(config.model.vae.config)
    if lat is None:
        return []
    m = config.data.resolution.multiple_of
    out = []
    if m % lat.downsample:
        out.append(("data.resolution.multiple_of", f"{m} is not a multiple of the VAE's token size {lat.downsample}"))
    for key in ("height", "width"):
        v = getattr(config.sampling, key)
        if v % lat.downsample:
            out.append((f"sampling.{key}", f"{v} is not a multiple of the VAE's token size {lat.downsample}"))
    return out


@recipe_check
def reasoner_weight_sharing(config: Any) -> list[tuple[str, str]]:
    """A ``sampling.reasoner`` that shares the text encoder's weights needs a text encoder it can share."""
    from lensforge.reasoners.use import sharing_problems

    return sharing_problems(config.sampling.reasoner, config.model.text_encoder, "sampling.reasoner")
