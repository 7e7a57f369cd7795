"""User-facing errors.

Everything a user can cause (a broken recipe, an unknown plugin, a missing file, a machine
that cannot run a recipe) raises a :class:`LensforgeError`. The CLI prints its message and
exits with status 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass


class LensforgeError(Exception):
    """An error caused by user input; printed without a traceback by the CLI."""

    exit_code = 2


@dataclass(frozen=True)
class Problem:
    """One problem found in a recipe: ``file -> dotted.key: message``."""

    key: str
    message: str
    file: str | None = None

    def __str__(self) -> str:
        where = self.file or "<recipe>"
        key = self.key or "<root>"
        return f"{where} -> {key}: {self.message}"


class RecipeError(LensforgeError):
    """A recipe has one or more problems; all of them are listed."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"recipe has {n} problem{'s' if n != 1 else ''}:"
        super().__init__("\n".join([head] + [f"  {p}" for p in self.problems]))


class PluginError(LensforgeError):
    """A plugin could not be found, loaded or validated."""
