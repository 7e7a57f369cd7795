"""Model roles: which DiTs a stage holds, and — in one place — what is trained, frozen, EMA'd and saved.

A stage declares its roles as a class attribute ``roles: dict[str, RoleSpec]``:

=================  =========  ======  =======  ==================================================
stage / role       trained    EMA     saved    initialised from
=================  =========  ======  =======  ==================================================
pretrain ``dit``   yes        yes     yes      ``init_from`` (or fresh)
rl ``dit``         yes        yes     yes      ``init_from``
rl ``reference``   no         no      no       ``init_from`` (the policy before RL)
distill ``dit``    yes        yes     yes      the ``teacher`` role's weights
distill ``teacher`` no        no      no       ``init_from``
distill ``critic`` yes        no      yes      the ``teacher`` role's weights
=================  =========  ======  =======  ==================================================

The recipe's ``model`` section gives the plugin nodes (``model.dit`` for every role unless
``model.roles.<role>.dit`` names another) and may point a role at other weights
(``model.roles.<role>.init_from``). :func:`build_roles` builds every declared role, loads its
initial weights (skipped for saved roles when resuming: the checkpoint restores them) and
freezes the untrained ones. The frozen VAE and text encoder are stored in checkpoints only when
small (:func:`save_frozen_decision`), so a 20B GPT-OSS is never copied into them.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Literal

from lensforge.errors import LensforgeError

log = logging.getLogger("lensforge.stages")

#: The role every stage has: the DiT it trains (or, for a no-Trainer loop, the one it uses).
MAIN_ROLE = "dit"


@dataclass(frozen=True)
class RoleSpec:
    """How a stage uses one DiT role."""

    trained: bool = True
    """Gets gradients and an optimizer (frozen otherwise: ``requires_grad_(False)``, eval mode)."""
    ema: bool = False
    """Keeps an exponential moving average copy (``ema_<role>``, saved with it) when the stage's
    ``ema_decay`` is > 0."""
    saved: bool = True
    """Stored in checkpoints (and restored on resume). Unsaved roles are rebuilt from their source."""
    init: str = "init_from"
    """Initial weights: ``init_from`` (the role's own ``init_from``, else the run's), ``fresh`` (the
    plugin's initialisation unless an ``init_from`` is given) or ``role:<name>`` (a copy of another
    role's initial weights)."""
    required: bool = False
    """An initial checkpoint is mandatory (e.g. RL's reference policy, distillation's teacher)."""

    def __post_init__(self) -> None:
        if self.init not in ("init_from", "fresh") and not self.init.startswith("role:"):
            raise ValueError(f"RoleSpec.init must be 'init_from', 'fresh' or 'role:<name>', got {self.init!r}")


#: The default: one trained, EMA'd, saved DiT, optionally ``init_from`` a checkpoint or folder.
DEFAULT_ROLES: dict[str, RoleSpec] = {MAIN_ROLE: RoleSpec(trained=True, ema=True, saved=True, init="fresh")}


def role_source(role: str, spec: RoleSpec, model_cfg: Any, run_init_from: str | None) -> str | None:
    """Where ``role``'s initial weights come from: a path, ``role:<name>``, or None (fresh)."""
    rc = (getattr(model_cfg, "roles", None) or {}).get(role)
    if rc is not None and rc.init_from:
        return rc.init_from
    if spec.init.startswith("role:"):
        return spec.init
    return run_init_from


def role_dit_ref(role: str, model_cfg: Any) -> Any:
    """The DiT plugin node of ``role`` (``model.roles.<role>.dit`` or ``model.dit``)."""
    rc = (getattr(model_cfg, "roles", None) or {}).get(role)
    return rc.dit if rc is not None and rc.dit is not None else model_cfg.dit


def check_roles(roles: dict[str, RoleSpec], config: Any, stage_name: str) -> list[tuple[str, str]]:
    """Recipe problems with a stage's roles: unknown ``model.roles`` keys, missing required sources,
    role DiTs whose inputs differ from the main DiT's, ``role:`` references to undeclared roles."""
    out: list[tuple[str, str]] = []
    model = config.model
    for name in (getattr(model, "roles", None) or {}):
        if name not in roles or name == MAIN_ROLE:
            extra = sorted(r for r in roles if r != MAIN_ROLE)
            out.append((f"model.roles.{name}",
                        f"stage '{stage_name}' has no role '{name}' (its extra roles: {', '.join(extra) or 'none'})"))
    main_spec = model.dit.schema.input_spec(model.dit.config) if model.dit is not None else None
    for name, spec in roles.items():
        if spec.init.startswith("role:") and spec.init[5:] not in roles:
            out.append(("stage", f"role '{name}' copies undeclared role '{spec.init[5:]}'"))
        src = role_source(name, spec, model, config.init_from)
        if spec.required and src is None:
            key = f"model.roles.{name}.init_from" if name != MAIN_ROLE else "init_from"
            out.append((key, f"stage '{stage_name}' needs weights for its '{name}' role: set init_from "
                             f"(or model.roles.{name}.init_from)"))
        ref = role_dit_ref(name, model)
        if ref is not model.dit and main_spec is not None:
            spec_r = ref.schema.input_spec(ref.config)
            if spec_r is not None and spec_r != main_spec:
                out.append((f"model.roles.{name}.dit",
                            f"the '{name}' DiT expects {spec_r} but model.dit expects {main_spec}"))
    return out


def save_frozen_decision(mode: Literal["auto", "always", "never"], module: Any, max_params: int) -> bool:
    """Whether a frozen VAE/text encoder is stored in checkpoints (``auto``: at most ``max_params``)."""
    if module is None:
        return False
    if mode != "auto":
        return mode == "always"
    return sum(p.numel() for p in module.parameters()) <= max_params


def _load_into(model: Any, state: dict[str, Any], role: str, source: str) -> None:
    own = model.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise LensforgeError(
            f"init_from: '{source}' is not the architecture of the '{role}' role's DiT: {len(wrong)} tensor(s) of "
            f"another shape (weights vs model), e.g. {'; '.join(wrong[:3])}"
        )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise LensforgeError(
            f"init_from: '{source}' does not match the '{role}' role's DiT: {len(missing)} missing keys "
            f"(e.g. {list(missing)[:3]}), {len(unexpected)} unexpected (e.g. {list(unexpected)[:3]})"
        )


def build_roles(roles: dict[str, RoleSpec], model_cfg: Any, *, run_init_from: str | None, resuming: bool,
                activation_checkpointing: bool = False) -> dict[str, Any]:
    """Build every declared DiT role with its initial weights; frozen roles are frozen.

    Saved roles skip their initial weights when ``resuming`` (the checkpoint restores them);
    ``role:<name>`` sources copy another role's initial weights (built first).
    """
    from lensforge.export import init_from_path

    built: dict[str, Any] = {}
    initial: dict[str, dict[str, Any]] = {}
    loaded: dict[str, dict[str, Any]] = {}  # path -> weights (one read per path)
    order = sorted(roles, key=lambda r: roles[r].init.startswith("role:"))  # sources before copies
    copied = {s.init[5:] for s in roles.values() if s.init.startswith("role:")}  # roles others copy
    for name in order:
        spec = roles[name]
        ref = role_dit_ref(name, model_cfg)
        overrides = {}
        if activation_checkpointing and spec.trained:
            if not any(f.name == "activation_checkpointing" for f in dataclasses.fields(ref.config)):
                raise LensforgeError(f"trainer.activation_checkpointing: DiT '{ref.name}' has no activation_checkpointing option")
            overrides["activation_checkpointing"] = True
        model = ref.build(**overrides)
        src = role_source(name, spec, model_cfg, run_init_from)
        if resuming and spec.saved:
            log.info("role %s: weights come from the resumed checkpoint", name)
        elif src is not None and src.startswith("role:"):
            other = src[5:]
            if other not in initial:
                raise LensforgeError(f"role '{name}' copies role '{other}', which has no initial weights")
            _load_into(model, initial[other], name, f"role {other}")
            initial[name] = initial[other]
            log.info("role %s: initialised from role %s", name, other)
        elif src is not None:
            if src not in loaded:
                loaded[src] = init_from_path(src)
            weights = loaded[src]
            sd = weights.get("dit") or weights.get("transformer")
            if not sd:
                raise LensforgeError(f"init_from: '{src}' has no DiT/transformer weights (found {', '.join(weights) or 'nothing'})")
            _load_into(model, sd, name, src)
            initial[name] = sd
            log.info("role %s: weights loaded from %s", name, src)
        elif name in copied:  # fresh weights another role starts from
            initial[name] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if not spec.trained:
            model.requires_grad_(False)
            model.eval()
        built[name] = model
    return built


__all__ = ["DEFAULT_ROLES", "MAIN_ROLE", "RoleSpec", "build_roles", "check_roles", "role_dit_ref", "role_source",
           "save_frozen_decision"]
