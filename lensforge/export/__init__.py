"""Diffusers-format Hugging Face folders: write (:func:`export_folder`), read (:func:`load_folder`),
and weights for ``init_from:`` (:func:`init_from_path`; checkpoints, exports, official Lens folders).

See :mod:`lensforge.export.common` for the folder layout.
"""

from lensforge.export.reader import (
    init_from_path,
    is_export_folder,
    load_folder,
    load_safetensors_folder,
)
from lensforge.export.writer import export_folder, save_state_dict

__all__ = ["export_folder", "init_from_path", "is_export_folder", "load_folder", "load_safetensors_folder", "save_state_dict"]
