"""The model organism: a tiny Llama trained on the CPU on a synthetic safety world (see :mod:`.world`)."""

from .._pkg import lazy_exports

_EXPORTS = {
    "ORGANISM_VERSION": ".build",
    "Organism": ".build",
    "build_organism": ".build",
    "default_cache_dir": ".build",
    "organism_dir": ".build",
    "PRESETS": ".train",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
