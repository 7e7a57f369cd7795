"""Contract for reasoner plugins (registry kind ``reasoner``): rewrite user prompts before the DiT sees them.

Lens puts a "reasoner" LLM in front of its image model: it turns a vague user prompt into the dense,
caption-like prompt the DiT was trained on (LENS_SPEC §5). A reasoner rewrites a **batch** of prompts
under a **system prompt** and returns one :class:`Rewrite` per prompt, in order: the text to give the
DiT, the raw model answer (for the record) and, when no usable rewrite came back, why.

* **The system prompt** is a plain-text file. Every plugin that uses one (``uses_system_prompt``) reads
  its ``system_prompt_file`` (default: the shipped Lens-style prompt,
  :func:`lensforge.reasoners.prompts.default_system_prompt_path`); :meth:`Reasoner.rewrite` takes an
  override, which is how the system-prompt search scores its candidates.
* **A failed or empty rewrite** falls back to the user's prompt, as Lens does (LENS_SPEC §5, step 5),
  and is *reported*: ``ok`` is False and ``error`` says why ("empty rewrite", the endpoint's error …).
  Callers count these; they are never silent.
* :meth:`Reasoner.setup` tells the reasoner what it serves before the first rewrite: the loaded text
  encoder (``transformers_lm`` shares a GPT-OSS encoder's weights) and the synthetic world the model
  was trained on (``synthetic_world`` writes that world's captions). Both are optional.

This module imports nothing heavy (recipe validation imports plugin classes).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from lensforge.interfaces.plugin import Plugin


@dataclass
class Rewrite:
    """The rewrite of one user prompt."""

    prompt: str
    """The user's prompt."""
    text: str
    """What the DiT is given: the rewritten prompt, or ``prompt`` when the rewrite failed or was empty."""
    raw: str | None = None
    """The reasoner's answer before parsing (None when there was none)."""
    ok: bool = True
    """Whether a usable rewrite came back (False: ``text`` is the user's prompt and ``error`` says why)."""
    error: str | None = None
    """Why there is no usable rewrite (an endpoint error, "empty rewrite" …)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Anything else worth recording (``synthetic_world``: the words it could not parse …)."""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"prompt": self.prompt, "text": self.text, "ok": self.ok}
        if self.raw is not None and self.raw != self.text:
            d["raw"] = self.raw
        if self.error is not None:
            d["error"] = self.error
        if self.notes:
            d["notes"] = self.notes
        return d


class Reasoner(Plugin):
    """Rewrites user prompts into the prompts the DiT is given (see the module docstring)."""

    #: Whether :meth:`rewrite` depends on the system prompt (the search needs one that does).
    uses_system_prompt: ClassVar[bool] = True

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()
        self._system_prompt: str | None = None

    # -- the system prompt ---------------------------------------------------------------------------

    @property
    def system_prompt(self) -> str:
        """The default system prompt (read from ``system_prompt_file`` on first use)."""
        if self._system_prompt is None:
            from lensforge.reasoners.prompts import load_system_prompt

            self._system_prompt = load_system_prompt(getattr(self.config, "system_prompt_file", None))
        return self._system_prompt

    # -- the contract ----------------------------------------------------------------------------------

    def setup(self, *, text_encoder: Any = None, world: Any = None) -> None:
        """Attach to what the reasoner serves (called once, before the first :meth:`rewrite`).

        ``text_encoder``: the loaded text-encoder plugin of the model (a reasoner may share its weights);
        ``world``: the :class:`~lensforge.data.sources.synthetic.SyntheticWorld.Config` the model was
        trained on, when it was trained on the synthetic world. Raises
        :class:`~lensforge.errors.LensforgeError` when the reasoner cannot serve them.
        """

    @abc.abstractmethod
    def rewrite(self, prompts: Sequence[str], *, system_prompt: str | None = None) -> list[Rewrite]:
        """One :class:`Rewrite` per prompt, in order, under ``system_prompt`` (None = :attr:`system_prompt`).

        Never raises for one prompt's failure: that prompt's rewrite has ``ok=False`` and an ``error``.
        """

    def preflight(self) -> None:
        """Raise :class:`~lensforge.errors.LensforgeError` when the reasoner cannot work here (an
        unreachable endpoint, a missing model folder …); called once before a run starts."""

    def describe(self) -> str:
        """One line for logs: what rewrites and how."""
        return str(self.plugin_name or type(self).__name__)

    def stats(self) -> dict[str, float]:
        """Counters since construction for logging (rewrites, failures, tokens …)."""
        return {}

    def close(self) -> None:
        """Release connections and memory."""


def rewrite_counts(rewrites: Sequence[Rewrite]) -> dict[str, int]:
    """``{"rewrites": n, "failed": k}`` of a batch (a failed or empty rewrite fell back to the user's prompt)."""
    return {"rewrites": len(rewrites), "failed": sum(not r.ok for r in rewrites)}


__all__ = ["Reasoner", "Rewrite", "rewrite_counts"]
