"""The model organism: a tiny Llama trained on the CPU on a synthetic safety world (see :mod:`.world`)."""

from .build import ORGANISM_VERSION, Organism, build_organism, default_cache_dir
from .train import PRESETS

__all__ = ["ORGANISM_VERSION", "PRESETS", "Organism", "build_organism", "default_cache_dir"]
