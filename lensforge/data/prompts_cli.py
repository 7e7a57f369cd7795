"""``lensforge data prompts SRC OUT``: its arguments (light to import; the work is in
:mod:`lensforge.data.synthetic_prompts`).

* ``synthetic:N`` — the taxonomy prompt set: categories in turn, one rubric item per stated fact;
* ``geneval:N`` — GenEval's six tags with its prompt templates and strict per-image rule.

Category counts are printed; ``--world key=value …`` sets synthetic world options
(``SyntheticWorld.Config`` fields), ``--categories a,b`` picks categories.
"""

from __future__ import annotations

import argparse

#: Taxonomy categories of ``synthetic:N`` (in the order rows take them).
TAXONOMY: tuple[str, ...] = ("single_object", "color", "shape", "size", "count", "position", "relation",
                             "background", "text", "aspect_ratio", "scene")
#: GenEval's six tags, the categories of ``geneval:N``.
GENEVAL_TAGS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``lensforge data prompts``."""
    p.add_argument("src", metavar="SRC", help="synthetic:N (taxonomy prompt set) or geneval:N (GenEval-style suite)")
    p.add_argument("out", metavar="OUT", help="output .jsonl file")
    p.add_argument("--seed", type=int, default=0, help="prompt seed (default 0)")
    p.add_argument("--categories", default=None, metavar="A,B,…",
                   help=f"categories to draw, in turn (default all). synthetic: {', '.join(TAXONOMY)}; "
                        f"geneval: {', '.join(GENEVAL_TAGS)}")
    p.add_argument("--world", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="synthetic world options, SyntheticWorld.Config fields (shapes=[circle,square] sizes=[huge] …)")
    p.add_argument("--resolution", type=int, default=64,
                   help="aspect_ratio rows get height/width near RESOLUTION² pixels, multiples of 16 (default 64)")

