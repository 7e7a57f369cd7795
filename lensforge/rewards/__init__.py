"""Reward plugins (registry kind ``reward``, contract :mod:`lensforge.interfaces.reward`).

* ``verifier`` (:mod:`.verifier`) — the synthetic world's programmatic verifier, rubric item by item;
* ``mix`` (:mod:`.mix`) — a weighted sum of other rewards.

Modules are imported lazily through the registry's entry points.
"""
