"""Reasoners: prompt rewriting in front of the DiT, and the training-free search over its system prompt.

* ``synthetic_world`` (:mod:`.synthetic_world`) — the CPU default: a short prompt in the synthetic world's
  words → the dense caption the world's captioner writes (no LLM);
* ``openai_compatible`` (:mod:`.openai_compatible`) — any chat-completions server through :mod:`lensforge.llm`;
* ``transformers_lm`` (a first-party plugin) — a local causal LM, optionally sharing the gpt_oss text
  encoder's weights;
* :mod:`.prompts` (system-prompt files, the shipped default), :mod:`.parsing` (Lens's output parsing);
* :mod:`.search` — ``lensforge reasoner search RECIPE`` (the ``reasoner_search`` stage).

See ``lensforge/reasoners/README.md``. Plugin modules are imported lazily through the registry.
"""
