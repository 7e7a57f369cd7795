"""The ``distill`` stage: a few-step, CFG-free student from a frozen CFG teacher (Lens-Turbo's recipe).

Lens-Turbo "combines DMD2, decoupled-DMD, SenseFlow, and uses R1 to stabilise adversarial training"
(research note §1.2, §4). Here, on packed mixed-resolution batches of the recipe's ``data`` section:

**Roles** (:class:`~lensforge.stages.schemas.DistillSchema`): ``teacher`` — frozen, the run's ``init_from``
(Lens-RL), rebuilt on resume; ``dit`` — the student, trained, EMA'd, starts from the teacher's weights;
``critic`` — the fake-score network f_φ, trained, saved, starts from the teacher's weights.

**The student's schedule** is Lens-Turbo's sampler: the Lens scheduler at ``student_steps`` (4) whose σ
depend on each sample's token count through mu (:func:`student_sigma_table`; 1.0, 0.967, 0.908, 0.767 → 0 at
1024²). A student input is a level σ_k of its own sample's table, ``k`` uniform; its ``x_{σ_k}`` is pure noise
at k = 0, else (probability ``backsim_prob``) the student's own Euler steps from noise — exactly the sampler —
or the batch's real latents noised to σ_k (DMD2's multi-step form). The student predicts v; ``x̂0 = x − σ·v``.

**Generator step** (every ``critic_updates_per_student + 1``-th optimizer step). ``x̂0`` is re-noised to
``x_t`` at ``t ~ U(dm_t_range)`` (shifted by the token count as pre-training's σ). The teacher gives
``x0_c`` (the prompt), ``x0_u`` (Lens's empty negative) and ``x0_cfg`` = its norm-rescaled CFG at α =
``teacher_guidance`` — what its sampler follows; the critic gives ``x0_F``. Decoupled-DMD splits DMD2's
gradient ``x0_F − x0_cfg`` into

* **DM** ``= x0_F − x0_c`` — distribution matching against the conditional teacher (the regulariser);
* **CA** ``= x0_c − x0_cfg`` — the CFG augmentation (the engine; ``= (α − 1)(x0_u − x0_c)`` for linear CFG),

each divided by DMD2's per-sample normaliser ``mean|x̂0 − x0_cfg|`` and applied through the pseudo-loss
``½‖x̂0 − sg(x̂0 − g)‖²`` (gradient g), weighted ``dm_weight`` and ``ca_weight``: at 1 and 1 it is DMD2 with the
CFG teacher. With ``adversarial`` on, ``gan_gen_weight · softplus(−D(x_t))`` through the critic's features
(critic parameters untouched). After the step, **IDA** (SenseFlow): ``critic ← ida_decay·critic +
(1 − ida_decay)·student``.

**Critic step** (the other optimizer steps): flow matching of the critic on ``sg(x̂0)`` at logit-normal,
resolution-shifted σ (target ``ε − x̂0``); with ``adversarial``, the head ``D`` on the critic's features of one
block learns real (the batch's latents, noised alike) vs fake with the non-saturating loss, plus approximate
**R1** ``r1_weight · mean (D(x) − D(x + r1_alpha·ε))²`` on the real inputs (FastGen). Head and critic share the
critic's optimizer (``optim.roles.critic``).

Every forward is one packed call over the batch's mixed sizes; each sample keeps its own σ's; all randomness
comes from the trunk's checkpointed noise generator, so a resumed run equals an uninterrupted one. Each loss
term, both gradient norms and the critic's real/fake logits go to MLflow; validation grids are the student
sampled as it will be used (``sampling``: ``student_steps`` steps, CFG 1, checked by validation).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lensforge.errors import LensforgeError
from lensforge.interfaces import DataBatch, PackedBatch, TextFeatures
from lensforge.sampling.sampler import cfg_rescale, empty_text_like, euler_step
from lensforge.sampling.schedule import lens_sigmas, time_shift, training_shift_mu
from lensforge.stages.ema import ema_update_
from lensforge.stages.objectives import add_noise, packed_call, per_sample_mean, per_token, predict_x0, tokens_of
from lensforge.stages.schemas import DistillSchema
from lensforge.stages.system import StageSystem

log = logging.getLogger("lensforge.distill")


# ------------------------------------------------------------------------------------------ schedule


def student_sigma_table(steps: int, lens: Tensor) -> Tensor:
    """``[steps + 1, B]``: column ``i`` is the Lens scheduler's σ at ``steps`` steps for sample ``i``'s token count
    (:func:`~lensforge.sampling.schedule.lens_sigmas`, what :func:`~lensforge.sampling.sampler.sample_latents` runs)."""
    cache: dict[int, Tensor] = {}
    cols = []
    for L in lens.tolist():
        if L not in cache:
            s = lens_sigmas(steps, int(L))
            if not bool((s[1:] < s[:-1]).all()):
                raise LensforgeError(f"stage.student_steps: the Lens scheduler gives no strictly decreasing {steps}-step "
                                     f"schedule at {L} tokens ({s.tolist()})")
            cache[L] = s
        cols.append(cache[L])
    return torch.stack(cols, 1)


def shifted_uniform(lens: Tensor, low: float, high: float, *, shift: bool, generator: torch.Generator) -> Tensor:
    """One re-noising level per sample: ``U(low, high)``, shifted by the sample's token count like pre-training."""
    u = low + (high - low) * torch.rand(len(lens), generator=generator, dtype=torch.float32)
    if not shift:
        return u
    return time_shift(training_shift_mu(lens.cpu()), u).float()


def shifted_logit_normal(lens: Tensor, mean: float, std: float, *, shift: bool, generator: torch.Generator) -> Tensor:
    """One σ per sample: ``sigmoid(N(mean, std²) + mu(tokens))`` (pre-training's distribution)."""
    logits = torch.randn(len(lens), generator=generator, dtype=torch.float32) * std + mean
    if shift:
        logits = logits + training_shift_mu(lens.cpu())
    return torch.sigmoid(logits)


# ------------------------------------------------------------------------------------------ the DMD terms


def teacher_predictions(teacher: Any, x_t: Tensor, shapes: list[tuple[int, int]], t: Tensor, text: TextFeatures,
                        lens: Tensor, guidance: float) -> dict[str, Tensor]:
    """The teacher's ``x0`` estimates at ``x_t``: ``cond`` (the prompt), ``uncond`` (Lens's empty negative: zero
    text tokens) and ``cfg`` (norm-rescaled CFG of the velocities at ``guidance``, as its sampler). Two packed
    calls (the conditional one is the call the critic makes, so equal networks give equal outputs)."""
    v_c = packed_call(teacher, x_t, shapes, t, text)
    if guidance == 1.0:
        x0_c = predict_x0(x_t, v_c, t, lens)
        return {"cond": x0_c, "uncond": x0_c, "cfg": x0_c}
    v_u = packed_call(teacher, x_t, shapes, t, empty_text_like(text, len(shapes)))
    v_cfg = cfg_rescale(v_c, v_u, guidance)
    return {"cond": predict_x0(x_t, v_c, t, lens), "uncond": predict_x0(x_t, v_u, t, lens),
            "cfg": predict_x0(x_t, v_cfg, t, lens)}


def dmd_directions(x0_student: Tensor, x0_fake: Tensor, teacher: dict[str, Tensor], lens: Tensor,
                   eps: float = 1e-6) -> dict[str, Tensor]:
    """Decoupled-DMD's two gradient directions for ``x̂0`` (packed, no gradient), each divided by DMD2's
    per-sample normaliser ``mean|x̂0 − x0_cfg|``: ``dm = x0_fake − x0_cond`` and ``ca = x0_cond − x0_cfg``
    (``dm + ca`` is DMD2's ``x0_fake − x0_cfg``). Also returns the normaliser ``[B]``."""
    with torch.no_grad():
        x0s = x0_student.detach().float()
        norm = per_sample_mean((x0s - teacher["cfg"].float()).abs(), lens) + eps
        n_tok = per_token(norm, lens)
        dm = (x0_fake.float() - teacher["cond"].float()) / n_tok
        ca = (teacher["cond"].float() - teacher["cfg"].float()) / n_tok
    return {"dm": dm, "ca": ca, "norm": norm}


def generator_terms(student: Any, teacher: Any, x_in: Tensor, sigmas: Tensor, t: Tensor, noise: Tensor,
                    shapes: list[tuple[int, int]], lens: Tensor, text: TextFeatures, *, guidance: float,
                    critic_call: Callable[[Tensor], tuple[Tensor, Tensor | None]]) -> dict[str, Any]:
    """The student's prediction and its DMD terms on a packed batch (the generator step's loss, before weights).

    ``x_in`` at levels ``sigmas`` → student ``x̂0``; re-noised to ``t`` with ``noise``; the teacher's cond /
    uncond / CFG estimates and the critic's (``critic_call(x_t) → (velocity, logits or None)``; it decides
    whether gradients reach ``x_t``). Returns ``dm``, ``ca`` (pseudo-losses), ``logits``, ``norm``, ``x0``.
    """
    dev = x_in.device
    v = packed_call(student, x_in, shapes, sigmas.to(dev), text)
    x0_hat = predict_x0(x_in, v, sigmas, lens)
    x_t = add_noise(x0_hat, noise.to(dev), t, lens)
    with torch.no_grad():
        teach = teacher_predictions(teacher, x_t.detach(), shapes, t.to(dev), text, lens, guidance)
    v_f, logits = critic_call(x_t)
    x0_fake = predict_x0(x_t.detach(), v_f.detach(), t, lens)
    d = dmd_directions(x0_hat, x0_fake, teach, lens)
    return {"dm": pseudo_loss(x0_hat, d["dm"], lens), "ca": pseudo_loss(x0_hat, d["ca"], lens), "logits": logits,
            "norm": d["norm"], "x0": x0_hat}


def pseudo_loss(x0: Tensor, direction: Tensor, lens: Tensor) -> Tensor:
    """``mean_i ½·mean‖x̂0 − sg(x̂0 − g)‖²`` over samples (each sample's own mean): its gradient moves every sample's
    ``x̂0`` along ``−g`` whatever its size, so a packed batch equals its samples' losses averaged."""
    target = (x0 - direction).detach()
    return 0.5 * per_sample_mean((x0.float() - target.float()) ** 2, lens).mean()


# ------------------------------------------------------------------------------------------ adversarial head


def image_stream(output: Any, n_img: int) -> Tensor:
    """The image-token hidden states ``[N_img, D]`` in a DiT block's output: the (last) tensor with one row per
    image token (``lens_mmdit`` blocks return ``(txt, img)``)."""
    items = list(output) if isinstance(output, (tuple, list)) else [output]
    found = [t for t in items if isinstance(t, Tensor) and t.dim() == 2 and t.shape[0] == n_img]
    if not found:
        raise LensforgeError(f"stage.disc_feature_layer: the block's output has no [{n_img}, D] image-token tensor")
    return found[-1]


class FeatureTap:
    """Captures one block's image-token output of a DiT on each forward (a forward hook)."""

    def __init__(self, dit: nn.Module, layer: int):
        units = dit.fsdp_units() if callable(getattr(dit, "fsdp_units", None)) else None
        if not units:
            raise LensforgeError("stage.adversarial: the DiT lists no blocks (fsdp_units()) to take features from")
        idx = len(units) // 2 if layer == -1 else layer
        if not -len(units) <= idx < len(units):
            raise LensforgeError(f"stage.disc_feature_layer: {layer} is not one of the critic's {len(units)} blocks")
        self.layer = idx % len(units)
        self.n_img = 0
        self.features: Tensor | None = None
        units[self.layer].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.n_img:
            self.features = image_stream(output, self.n_img)

    @contextlib.contextmanager
    def capture(self, n_img: int) -> Iterator["FeatureTap"]:
        self.n_img, self.features = n_img, None
        try:
            yield self
        finally:
            self.n_img = 0


class DiscriminatorHead(nn.Module):
    """Per-token MLP on a block's image features → one logit per sample (the mean over its own tokens)."""

    def __init__(self, dim: int, hidden: int | None = None):
        super().__init__()
        hidden = hidden or dim
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, 1)

    def forward(self, features: Tensor, lens: Tensor) -> Tensor:
        h = self.fc2(F.silu(self.fc1(self.norm(features.float()))))[:, 0]
        return per_sample_mean(h, lens)


def feature_width(dit: nn.Module, tap: FeatureTap) -> int:
    """Width of the tapped block's image features (one tiny forward)."""
    spec = type(dit).input_spec(dit.config) if hasattr(type(dit), "input_spec") else None
    if spec is None:
        raise LensforgeError("stage.adversarial: cannot tell the critic's input channels / text widths")
    p = next(dit.parameters())
    text = TextFeatures(layers=[torch.zeros(1, int(d), device=p.device, dtype=p.dtype) for d in spec.text_dims],
                        lengths=torch.tensor([1]))
    pb = PackedBatch(img_tokens=torch.zeros(1, int(spec.latent_channels), device=p.device, dtype=p.dtype),
                     img_shapes=torch.tensor([[1, 1]]), sigmas=torch.full((1,), 0.5, device=p.device, dtype=p.dtype),
                     text=text)
    with torch.no_grad(), tap.capture(1):
        dit(pb)
        assert tap.features is not None
        return int(tap.features.shape[-1])


@contextlib.contextmanager
def frozen_params(*modules: nn.Module | None) -> Iterator[None]:
    """Parameters of ``modules`` get no gradient inside the block (inputs still do); flags restored after."""
    params = [p for m in modules if m is not None for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


# ------------------------------------------------------------------------------------------ the stage


class DistillStage(DistillSchema, StageSystem):
    """Distribution-matching distillation into a few-step CFG-free student (see the module docstring).

    Its ``Config``, roles and checks are :class:`~lensforge.stages.schemas.DistillSchema`.
    """

    manual_optimization = True

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        c = self.config
        self.tap: FeatureTap | None = None
        self.disc_head: DiscriminatorHead | None = None
        if c.adversarial and "critic" in self._role_names:
            self.tap = FeatureTap(self.critic, c.disc_feature_layer)
            self.disc_head = DiscriminatorHead(feature_width(self.critic, self.tap))
        self._metrics: dict[str, dict[str, float]] = {"critic": {}, "student": {}}
        self._counts = {"critic": 0, "student": 0}

    @classmethod
    def build(cls, recipe: Any, run: Any = None) -> "DistillStage":
        try:
            system: DistillStage = super().build(recipe, run)  # type: ignore[assignment]
        except LensforgeError as e:
            if "is not the architecture" in str(e) or "does not match" in str(e):
                raise LensforgeError(f"{e}\n  the distillation student and critic start from the teacher's weights: model.dit "
                                     "must describe the teacher's DiT (copy it from the teacher's recipe)") from None
            raise
        c = system.config
        log.info("distill: %d-step CFG-free student from a CFG %.1f teacher; DM %.3g, CA %.3g, %d critic steps per "
                 "student step, backward simulation %.0f%%, IDA %s, adversarial %s", c.student_steps, c.teacher_guidance,
                 c.dm_weight, c.ca_weight, c.critic_updates_per_student, 100 * c.backsim_prob,
                 f"{c.ida_decay:g}" if c.ida else "off",
                 f"on (gen {c.gan_gen_weight:g}, disc {c.gan_disc_weight:g}, R1 {c.r1_weight:g})" if c.adversarial else "off")
        return system

    @classmethod
    def preflight(cls, recipe: Any) -> list[str]:
        return super().preflight(recipe) + teacher_architecture_problems(recipe)

    def extra_role_parameters(self, name: str) -> list[nn.Parameter]:
        return list(self.disc_head.parameters()) if name == "critic" and self.disc_head is not None else []

    def summary(self) -> dict[str, Any]:
        return {"distill": {"student_steps": self._counts["student"], "critic_steps": self._counts["critic"],
                            "student_sampling_steps": self.config.student_steps}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["lensforge"]["distill"] = dict(self._counts)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        saved = (checkpoint.get("lensforge") or {}).get("distill") or {}
        self._counts.update({k: int(v) for k, v in saved.items() if k in self._counts})

    # ------------------------------------------------------------------ step pieces

    def is_student_step(self, step: int) -> bool:
        """Optimizer step ``step`` (0-based) updates the student; the others update the critic (two time-scale)."""
        k = self.config.critic_updates_per_student
        return (step + 1) % (k + 1) == 0

    def student_inputs(self, x0_real: Tensor, shapes: list[tuple[int, int]], lens: Tensor, text: TextFeatures
                       ) -> dict[str, Tensor]:
        """The student's inputs of a packed batch: per sample a level ``k`` of its own schedule, its σ, and
        ``x_σ`` (noise at k = 0; else the student's own sampler steps from that noise with probability
        ``backsim_prob``, or the real latents noised to σ)."""
        c, g = self.config, self.generator
        B = len(shapes)
        table = student_sigma_table(c.student_steps, lens)
        k = torch.randint(0, c.student_steps, (B,), generator=g)
        sim = (torch.rand(B, generator=g) < c.backsim_prob) & (k > 0)
        noise = torch.randn(x0_real.shape, generator=g).to(x0_real.device)
        sig = table[k, torch.arange(B)]
        x = add_noise(x0_real, noise, sig, lens)
        if bool(sim.any()):
            x = x.clone()
            offsets = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
            rows = {i: torch.arange(int(offsets[i]), int(offsets[i + 1]), device=x.device) for i in range(B)}
            idx = [i for i in range(B) if bool(sim[i])]
            xs = {i: noise[rows[i]] for i in idx}
            was = self.dit.training
            self.dit.eval()
            try:
                with torch.no_grad():
                    for j in range(int(k[idx].max())):
                        act = [i for i in idx if int(k[i]) > j]
                        xa = torch.cat([xs[i] for i in act], 0)
                        s, s_next = table[j, act], table[j + 1, act]
                        v = packed_call(self.dit, xa, [shapes[i] for i in act], s.to(x.device), text.select(act))
                        xa = euler_step(xa, v, s, s_next, lens[act])
                        for i, part in zip(act, torch.split(xa, [int(lens[i]) for i in act], 0)):
                            xs[i] = part
            finally:
                self.dit.train(was)
            for i in idx:
                x[rows[i]] = xs[i].to(x.dtype)
        return {"x": x, "sigmas": sig, "levels": k, "simulated": sim, "table": table}

    def _critic_call(self, x_t: Tensor, shapes: list[tuple[int, int]], t: Tensor, text: TextFeatures, lens: Tensor,
                     features: bool) -> tuple[Tensor, Tensor | None]:
        """The critic's velocity (and, with ``features``, the head's logits) of a packed batch."""
        if not features or self.tap is None:
            return packed_call(self.critic, x_t, shapes, t.to(x_t.device), text), None
        with self.tap.capture(int(lens.sum())) as tap:
            v = packed_call(self.critic, x_t, shapes, t.to(x_t.device), text)
            assert tap.features is not None and self.disc_head is not None
            return v, self.disc_head(tap.features, lens)

    # ------------------------------------------------------------------ the objective

    def training_step(self, batch: DataBatch, batch_idx: int) -> Tensor:
        step = int(self.global_step)
        step_seconds = self.step_seconds()
        latents, text = self.encode_batch(batch)
        x0_real, shapes, lens = tokens_of(latents)
        x0_real = x0_real.float()
        if self.is_student_step(step):
            kind = "student"
            loss, m = self.student_step(x0_real, shapes, lens, text)
        else:
            kind = "critic"
            loss, m = self.critic_step(x0_real, shapes, lens, text)
        self._counts[kind] += 1
        self._metrics[kind] = m
        # the progress bar shows this step's loss (critic or student); MLflow gets each kind on its own curve
        self.log("train/loss", loss, prog_bar=True, logger=False, batch_size=len(shapes))
        if self.should_log_details():
            logs = self.common_metrics(batch, text, step_seconds)
            for part in self._metrics.values():  # the newest critic and student figures, whichever step this is
                logs.update(part)
            logs["train/img_tokens"] = float(lens.sum())
            self.log_dict(logs, batch_size=len(shapes))
        return loss

    def student_step(self, x0_real: Tensor, shapes: list[tuple[int, int]], lens: Tensor, text: TextFeatures
                     ) -> tuple[Tensor, dict[str, float]]:
        c, g = self.config, self.generator
        inp = self.student_inputs(x0_real, shapes, lens, text)
        lo, hi = c.dm_t_range
        t = shifted_uniform(lens, lo, hi, shift=c.dm_t_shift, generator=g)
        noise = torch.randn(x0_real.shape, generator=g)
        gan = c.adversarial and c.gan_gen_weight > 0 and self.disc_head is not None

        def critic_call(x_t: Tensor) -> tuple[Tensor, Tensor | None]:
            with frozen_params(self.critic, self.disc_head):  # gradients reach x_t (GAN), never the critic
                with contextlib.nullcontext() if gan else torch.no_grad():
                    return self._critic_call(x_t, shapes, t, text, lens, features=gan)

        terms = generator_terms(self.dit, self.teacher, inp["x"], inp["sigmas"], t, noise, shapes, lens, text,
                                guidance=c.teacher_guidance, critic_call=critic_call)
        loss = c.dm_weight * terms["dm"] + c.ca_weight * terms["ca"]
        m = {"distill/dm_loss": float(terms["dm"].detach()), "distill/ca_loss": float(terms["ca"].detach()),
             "distill/dmd_normaliser": float(terms["norm"].mean()),
             "distill/student_sigma_mean": float(inp["sigmas"].mean()),
             "distill/backsim_fraction": float(inp["simulated"].float().mean())}
        if gan:
            g_loss = F.softplus(-terms["logits"]).mean()
            loss = loss + c.gan_gen_weight * g_loss
            m["distill/gan_gen_loss"] = float(g_loss.detach())
        norm = self.step_role("dit", loss)
        if c.ida:
            ema_update_(self.critic, self.dit, c.ida_decay)
        m["distill/student_loss"] = float(loss.detach())
        if norm is not None:
            m["distill/grad_norm_student"] = norm
        return loss.detach(), m

    def critic_step(self, x0_real: Tensor, shapes: list[tuple[int, int]], lens: Tensor, text: TextFeatures
                    ) -> tuple[Tensor, dict[str, float]]:
        c, g = self.config, self.generator
        inp = self.student_inputs(x0_real, shapes, lens, text)
        with torch.no_grad():
            v = packed_call(self.dit, inp["x"], shapes, inp["sigmas"].to(x0_real.device), text)
            x0_fake = predict_x0(inp["x"], v, inp["sigmas"], lens).float()
        t = shifted_logit_normal(lens, c.critic_logit_mean, c.critic_logit_std, shift=c.dm_t_shift, generator=g)
        noise = torch.randn(x0_fake.shape, generator=g).to(x0_fake.device)
        x_t = add_noise(x0_fake, noise, t, lens)
        adv = c.adversarial and self.disc_head is not None
        v_f, d_fake = self._critic_call(x_t, shapes, t, text, lens, features=adv)
        fm = per_sample_mean((v_f - (noise - x0_fake)) ** 2, lens).mean()
        loss = fm
        m = {"distill/critic_fm_loss": float(fm.detach())}
        if adv:
            assert d_fake is not None
            noise_r = torch.randn(x0_real.shape, generator=g).to(x0_real.device)
            x_r = add_noise(x0_real, noise_r, t, lens)
            _, d_real = self._critic_call(x_r, shapes, t, text, lens, features=True)
            assert d_real is not None
            d_loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
            loss = loss + c.gan_disc_weight * d_loss
            m.update({"distill/disc_loss": float(d_loss.detach()), "distill/d_real": float(d_real.detach().mean()),
                      "distill/d_fake": float(d_fake.detach().mean())})
            if c.r1_weight > 0:
                eps = torch.randn(x0_real.shape, generator=g).to(x0_real.device)
                _, d_pert = self._critic_call(x_r + c.r1_alpha * eps, shapes, t, text, lens, features=True)
                assert d_pert is not None
                r1 = ((d_real - d_pert) ** 2).mean()
                loss = loss + c.r1_weight * r1
                m["distill/r1"] = float(r1.detach())
        norm = self.step_role("critic", loss)
        m["distill/critic_loss"] = float(loss.detach())
        if norm is not None:
            m["distill/grad_norm_critic"] = norm
        return loss.detach(), m


# ------------------------------------------------------------------------------------------ checks


def teacher_architecture_problems(recipe: Any) -> list[str]:
    """The teacher's recorded DiT (its run's ``recipe.yaml`` or export's ``lensforge.json``) vs ``model.dit``:
    the student and critic start from the teacher's weights, so they must match (no weights are read)."""
    import json
    from pathlib import Path

    import yaml

    from lensforge.stages.roles import role_source
    from lensforge.stages.schemas import dit_architecture

    cfg = recipe.config
    src = role_source("teacher", DistillSchema.roles["teacher"], cfg.model, cfg.init_from)
    if not src:
        return []
    p = Path(src).expanduser()
    node = None
    candidates = [p / "recipe.yaml", p.parent / "recipe.yaml", p.parent.parent / "recipe.yaml"] if p.exists() else []
    if p.is_dir() and (p / "lensforge.json").is_file():
        try:
            rec = json.loads((p / "lensforge.json").read_text(encoding="utf-8")).get("components", {}).get("dit") or {}
            node = {"name": rec.get("plugin"), **(rec.get("config") or {})} if rec.get("plugin") else None
        except (OSError, ValueError):
            node = None
    else:
        for cand in candidates:
            if cand.is_file():
                try:
                    node = ((yaml.safe_load(cand.read_text(encoding="utf-8")) or {}).get("model") or {}).get("dit")
                except (OSError, yaml.YAMLError):
                    node = None
                break
    if not isinstance(node, dict):
        return []
    ref = cfg.model.dit
    try:
        theirs = dit_architecture(ref, node)
    except LensforgeError as e:
        return [f"init_from: cannot read the teacher's DiT from {src}: {str(e).splitlines()[-1].strip()}"]
    mine = dit_architecture(ref)
    if theirs == mine:
        return []
    return [f"init_from: the teacher '{src}' is a {theirs[0]} DiT {theirs[1]} but model.dit is {mine[0]} {mine[1]}; the "
            "student and critic start from the teacher's weights, so model.dit must be the teacher's architecture"]


__all__ = [
    "DiscriminatorHead", "DistillStage", "FeatureTap", "dmd_directions", "generator_terms", "image_stream", "pseudo_loss",
    "shifted_logit_normal", "shifted_uniform", "student_sigma_table", "teacher_architecture_problems",
    "teacher_predictions",
]
