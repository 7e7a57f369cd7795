"""The distillation stage's math on packed mixed-resolution batches: DMD terms packed == per sample, the
student's σ per sample are the Lens scheduler's at its size (backward simulation = the sampler's own steps),
a critic equal to the teacher gives no distribution-matching gradient, the adversarial head's features."""

from __future__ import annotations

import copy

import pytest
import torch

from lensforge.interfaces import TextFeatures
from lensforge.sampling.sampler import euler_step, guided_velocity
from lensforge.sampling.schedule import lens_sigmas
from lensforge.stages.distill import (
    DistillStage, FeatureTap, dmd_directions, generator_terms, image_stream, student_sigma_table, teacher_predictions,
)
from lensforge.stages.objectives import add_noise, packed_call, tokens_of

C = 8
SHAPES = [(2, 4), (3, 3), (4, 2), (2, 2)]  # 1:2, 1:1, 2:1 token grids and a small one
TEXT_LENS = [3, 0, 5, 2]  # the second sample's caption was dropped (zero text tokens)


def _dit(seed: int):
    from lensforge import registry

    cls = registry.get("dit", "lens_mmdit")
    torch.manual_seed(seed)
    return cls(cls.Config(flavor="tiny", attention="sdpa_loop", zero_init=False, in_channels=C, text_dims=(6,))).eval()


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text = TextFeatures(layers=[torch.randn(sum(TEXT_LENS), 6, generator=g)], lengths=torch.tensor(TEXT_LENS))
    latents = [torch.randn(C, h, w, generator=g) for h, w in SHAPES]
    return latents, text


def _inputs(seed: int = 1):
    latents, text = _batch()
    x0, shapes, lens = tokens_of(latents)
    g = torch.Generator().manual_seed(seed)
    B = len(shapes)
    table = student_sigma_table(4, lens)
    k = torch.tensor([0, 1, 2, 3])
    sig = table[k, torch.arange(B)]
    x_in = add_noise(x0, torch.randn(x0.shape, generator=g), sig, lens)
    t = torch.rand(B, generator=g) * 0.9 + 0.05
    noise = torch.randn(x0.shape, generator=g)
    return x_in, sig, t, noise, shapes, lens, text


def _terms(student, teacher, critic, x_in, sig, t, noise, shapes, lens, text, guidance=4.0):
    def critic_call(x_t):
        with torch.no_grad():
            return packed_call(critic, x_t, shapes, t, text), None

    return generator_terms(student, teacher, x_in, sig, t, noise, shapes, lens, text, guidance=guidance,
                           critic_call=critic_call)


def _rows(lens, i):
    off = [0] + torch.cumsum(lens, 0).tolist()
    return slice(off[i], off[i + 1])


def test_dm_and_ca_losses_on_a_packed_batch_equal_the_per_sample_losses():
    student, teacher, critic = _dit(0), _dit(1), _dit(2)
    x_in, sig, t, noise, shapes, lens, text = _inputs()
    packed = _terms(student, teacher, critic, x_in, sig, t, noise, shapes, lens, text)
    student.zero_grad()
    (packed["dm"] + packed["ca"]).backward()
    grad_packed = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    alone = {"dm": [], "ca": []}
    grad_alone = {n: torch.zeros_like(g) for n, g in grad_packed.items()}
    for i in range(len(shapes)):
        r = _rows(lens, i)
        one = _terms(student, teacher, critic, x_in[r], sig[i:i + 1], t[i:i + 1], noise[r], [shapes[i]], lens[i:i + 1],
                     text.select([i]))
        alone["dm"].append(float(one["dm"].detach()))
        alone["ca"].append(float(one["ca"].detach()))
        student.zero_grad()
        (one["dm"] + one["ca"]).backward()
        for n, p in student.named_parameters():
            if n in grad_alone and p.grad is not None:
                grad_alone[n] += p.grad / len(shapes)
    for key in ("dm", "ca"):
        mean = sum(alone[key]) / len(shapes)
        assert mean > 1e-4, f"{key} is not trivially zero"
        value = float(packed[key].detach())
        assert abs(value - mean) <= 1e-5 * max(1.0, mean), (key, value, mean)
    for n, g in grad_packed.items():
        assert torch.allclose(g, grad_alone[n], rtol=1e-4, atol=1e-6), n


def test_the_students_sigmas_per_sample_are_the_lens_schedulers_at_its_size():
    lens = torch.tensor([4096, 8100, 16, 15, 4096])
    table = student_sigma_table(4, lens)
    for i, L in enumerate(lens.tolist()):
        assert torch.equal(table[:, i], lens_sigmas(4, L)), L
    # Lens-Turbo's published values (LENS_SPEC §4): 1024² (4096 tokens) and 1440² (8100 tokens)
    assert torch.allclose(table[:4, 0], torch.tensor([1.0, 0.967384, 0.908144, 0.767200]), atol=2e-6)
    assert torch.allclose(table[:4, 1], torch.tensor([1.0, 0.949135, 0.861494, 0.674617]), atol=2e-6)
    assert float(table[-1].abs().max()) == 0.0


def test_student_inputs_use_each_samples_own_levels_and_backward_simulation_is_the_sampler():
    stage = DistillStage(DistillStage.Config(student_steps=4, backsim_prob=1.0, adversarial=False),
                         dits={"teacher": _dit(1), "dit": _dit(0), "critic": _dit(1)})
    latents, text = _batch()
    x0, shapes, lens = tokens_of(latents)
    seen = set()
    for seed in range(6):
        stage.generator.manual_seed(seed)
        inp = stage.student_inputs(x0, shapes, lens, text)
        for i, (h, w) in enumerate(shapes):
            k = int(inp["levels"][i])
            seen.add(k)
            assert float(inp["sigmas"][i]) == float(lens_sigmas(4, h * w)[k])
            if k > 0:
                assert bool(inp["simulated"][i])
        # re-draw the same noise and run the Lens sampler's own steps sample by sample
        stage.generator.manual_seed(seed)
        torch.randint(0, 4, (len(shapes),), generator=stage.generator)
        torch.rand(len(shapes), generator=stage.generator)
        noise = torch.randn(x0.shape, generator=stage.generator)
        for i, (h, w) in enumerate(shapes):
            r = _rows(lens, i)
            sched = lens_sigmas(4, h * w)
            x = noise[r]
            for j in range(int(inp["levels"][i])):
                v = guided_velocity(stage.dit, x, [(h, w)], sched[j:j + 1], text.select([i]), guidance_scale=1.0)
                x = euler_step(x, v, sched[j:j + 1], sched[j + 1:j + 2], torch.tensor([h * w]))
            assert torch.allclose(inp["x"][r], x, atol=1e-5), (seed, i)
    assert seen == {0, 1, 2, 3}


def test_a_critic_equal_to_the_teacher_gives_no_distribution_matching_gradient():
    student, teacher = _dit(0), _dit(1)
    critic = copy.deepcopy(teacher)
    x_in, sig, t, noise, shapes, lens, text = _inputs()
    terms = _terms(student, teacher, critic, x_in, sig, t, noise, shapes, lens, text)
    student.zero_grad()
    terms["dm"].backward()
    assert float(terms["dm"]) == 0.0
    assert all(p.grad is None or float(p.grad.abs().max()) == 0.0 for p in student.parameters())
    # not vacuous: the CFG-augmentation term still pulls, and another critic gives a DM gradient
    student.zero_grad()
    _terms(student, teacher, critic, x_in, sig, t, noise, shapes, lens, text)["ca"].backward()
    assert max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None) > 0
    student.zero_grad()
    _terms(student, teacher, _dit(2), x_in, sig, t, noise, shapes, lens, text)["dm"].backward()
    assert max(float(p.grad.abs().max()) for p in student.parameters() if p.grad is not None) > 0


def test_decoupled_terms_add_up_to_dmd2_with_the_cfg_teacher():
    teacher, critic = _dit(1), _dit(2)
    x_in, sig, t, noise, shapes, lens, text = _inputs()
    teach = teacher_predictions(teacher, x_in, shapes, t, text, lens, 4.0)
    x0_fake = x_in - t.repeat_interleave(lens)[:, None] * packed_call(critic, x_in, shapes, t, text)
    x0_student = torch.randn_like(x_in)
    d = dmd_directions(x0_student, x0_fake, teach, lens)
    norm = d["norm"].repeat_interleave(lens)[:, None]
    assert torch.allclose((d["dm"] + d["ca"]) * norm, x0_fake - teach["cfg"], atol=1e-5)
    # a dropped caption: cond == uncond, so CFG adds nothing there
    r = _rows(lens, 1)
    assert float(d["ca"][r].abs().max()) < 1e-6 and float(d["ca"].abs().max()) > 1e-3
    # at guidance 1 the CFG teacher is the conditional one: no CA term
    one = teacher_predictions(teacher, x_in, shapes, t, text, lens, 1.0)
    assert float(dmd_directions(x0_student, x0_fake, one, lens)["ca"].abs().max()) == 0.0


def test_feature_tap_takes_the_image_stream_of_one_block():
    critic = _dit(3)
    tap = FeatureTap(critic, -1)
    latents, text = _batch()
    x0, shapes, lens = tokens_of(latents)
    with tap.capture(int(lens.sum())):
        packed_call(critic, x0, shapes, torch.full((len(shapes),), 0.5), text)
    assert tap.features is not None and tap.features.shape == (int(lens.sum()), critic.arch.inner_dim)
    assert tap.layer == len(critic.fsdp_units()) // 2
    with pytest.raises(Exception, match="disc_feature_layer"):
        FeatureTap(critic, 99)
    with pytest.raises(Exception, match="image-token"):
        image_stream((torch.zeros(3, 4),), 5)
