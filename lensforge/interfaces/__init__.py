"""The contracts plugins implement and the dataclasses they exchange."""

from lensforge.interfaces.batch import DataBatch, PackedBatch, Sample, TextFeatures
from lensforge.interfaces.data import DataSource, SampleError
from lensforge.interfaces.models import DiT, DiTSpec, AttentionBackend, LatentSpec, TextEncoder, VAE
from lensforge.interfaces.plugin import EmptyConfig, Plugin
from lensforge.interfaces.stage import Stage

__all__ = [
    "AttentionBackend", "DataBatch", "DataSource", "DiT", "DiTSpec", "EmptyConfig", "LatentSpec",
    "PackedBatch", "Plugin", "Sample", "SampleError", "Stage", "TextEncoder", "TextFeatures", "VAE",
]
