"""The ``reasoner_search`` stage's recipe schema and checks (light: no torch).

A search is a recipe like every other stage run — ``lensforge validate`` checks it, ``lensforge
reasoner search RECIPE`` (or ``lensforge fit RECIPE``) runs it — whose ``stage`` node is
``{name: reasoner_search, …}`` (the fields below), with ``init_from`` naming the trained model whose
prompts are rewritten, ``model`` its architecture (as for RL and distillation) and ``sampling`` the
sampler settings (steps, guidance scale, image size) used to score candidates. See
``lensforge/reasoners/README.md`` and ``recipes/tiny/reasoner_search.yaml``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lensforge.interfaces.schema import StageSchema
from lensforge.llm.config import EndpointConfig
from lensforge.recipe.plugin_config import (
    Fraction, NonNegativeFloat, NonNegativeInt, PluginRef, PositiveInt, plugin_field,
)


class ReasonerSearchSchema(StageSchema):
    """Config and checks of the ``reasoner_search`` stage (training-free search over a reasoner's system prompt)."""

    @dataclass(kw_only=True)
    class Config:
        prompts: str
        """Prompt-set JSONL (lensforge data prompts …), split by a seeded hash of each id into a dev part (scored every round) and a held-out part (the final report)."""
        reasoner: PluginRef = plugin_field("reasoner")
        """The reasoner whose system prompt is searched (openai_compatible or transformers_lm: one that uses a system prompt)."""
        proposer: EndpointConfig
        """The LLM that proposes revised system prompts (any OpenAI-compatible endpoint; set temperature ~1 as OPRO)."""
        reward: PluginRef = plugin_field("reward", {"name": "verifier"})
        """Reward plugin scoring the generated images against their rows (verifier on CPU; rubric_judge with a VLM)."""
        initial_system_prompt: str | None = None
        """File of the system prompt the search starts from (null = the reasoner's own system_prompt_file, else the shipped Lens-style prompt)."""
        task_notes: str = ""
        """Extra facts for the proposer about the image model (e.g. the caption style it was trained on)."""
        split_seed: int = 0
        """Seed of the dev / held-out split (stable under adding or reordering rows)."""
        held_out_fraction: Fraction = 0.5
        """Share of the prompt set held out for the final report (by a seeded hash of each id)."""
        dev_prompts: PositiveInt | None = 32
        """At most this many dev prompts, taken round-robin over categories (p1: a small prompt set; null = all)."""
        held_out_prompts: PositiveInt | None = None
        """At most this many held-out prompts, round-robin over categories (null = all)."""
        seeds: list[int] = field(default_factory=lambda: [0])
        """Image seeds: every prompt is generated once per seed."""
        rounds: PositiveInt = 4
        """Rounds of propose → score → keep the beam (after scoring the initial prompt)."""
        proposals_per_round: PositiveInt = 4
        """New system prompts asked of the proposer per round, spread over the beam's members."""
        beam_size: PositiveInt = 2
        """Best-scoring system prompts kept as parents for the next round (ProTeGi's beam)."""
        worst_examples: PositiveInt = 4
        """Lowest-scoring dev examples of a parent shown to the proposer, with their failed rubric items."""
        history_shown: PositiveInt = 8
        """Best (system prompt, score) pairs so far shown to the proposer (OPRO's history)."""
        max_llm_calls: NonNegativeInt = 0
        """Budget: rewrites + proposer requests (0 = unlimited); the held-out report is reserved from it."""
        max_images: NonNegativeInt = 0
        """Budget: generated images (0 = unlimited); the held-out report is reserved from it."""
        max_wall_s: NonNegativeFloat = 0.0
        """Budget: seconds of search, checked before each candidate (0 = unlimited; the held-out report runs after)."""
        patience: NonNegativeInt = 0
        """Stop after this many rounds without a better dev score (0 = never)."""
        max_failed_rewrites: Fraction = 0.25
        """A candidate whose dev rewrites failed (request error, empty answer) more often than this is recorded as failed, not scored."""
        max_prompt_chars: PositiveInt = 8000
        """A proposed system prompt longer than this is malformed (counted and skipped)."""
        batch_size: PositiveInt = 16
        """Images generated together (sizes packed into one DiT call per step)."""
        output_file: str | None = None
        """Where the best system prompt is written (null = <output_dir>/best_system_prompt.txt)."""

    @classmethod
    def check_config(cls, config: Any) -> list[tuple[str, str]]:
        out = [("proposer", p) for p in config.proposer.problems()]
        if not config.prompts or not str(config.prompts).strip():
            out.append(("prompts", "a prompt-set .jsonl file is required"))
        if not config.seeds:
            out.append(("seeds", "at least one image seed"))
        if not 0.0 < config.held_out_fraction < 1.0:
            out.append(("held_out_fraction", f"must be between 0 and 1 (both parts non-empty), got {config.held_out_fraction}"))
        reasoner_cls = getattr(config.reasoner, "schema", None)
        if reasoner_cls is not None and not getattr(reasoner_cls, "uses_system_prompt", True):
            out.append(("reasoner", f"reasoner '{config.reasoner.name}' does not use a system prompt, so there is nothing "
                                    "to search: use openai_compatible or transformers_lm"))
        return out

    @classmethod
    def check_recipe(cls, config: Any) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if not config.init_from:
            out.append(("init_from", "reasoner_search needs the trained model whose prompts are rewritten: a run "
                                     "folder, a checkpoint or an exported folder"))
        from lensforge.reasoners.use import sharing_problems

        out += sharing_problems(config.stage.config.reasoner, config.model.text_encoder, "stage.reasoner")
        return out

    @classmethod
    def check_environment(cls, config: Any) -> list[tuple[str, str]]:
        out = []
        if config.prompts and not os.path.isfile(os.path.expanduser(config.prompts)):
            out.append(("prompts", f"prompt set '{config.prompts}' does not exist"))
        f = config.initial_system_prompt
        if f is not None and not os.path.isfile(os.path.expanduser(f)):
            out.append(("initial_system_prompt", f"system prompt file '{f}' does not exist"))
        for key in ("reasoner", "reward"):
            ref: PluginRef = getattr(config, key)
            check = getattr(ref.schema, "check_environment", None)
            if callable(check):
                out += [(f"{key}.{k}" if k else key, m) for k, m in check(ref.config)]
        return out


__all__ = ["ReasonerSearchSchema"]
