"""First-party reasoner plugins that need model weights (``transformers_lm``); the light ones live in
``lensforge.reasoners``."""
