"""darts-sg: differentiable architecture search with the MobileNeXt sandglass block.

The public names load on first use (PEP 562), so that a submodule without torch (`utils.allocator`,
`utils.errors`) can be imported without torch: the entry points relaunch the process before importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model.genotype import Genotype, GenotypeError, load_genotype
    from .model.imagenet import build_imagenet_network
    from .model.network import Network, Supernet, build_network, build_supernet, count_params
    from .model.ops import SEARCH_SPACES, OpOptions

_PUBLIC = {
    "model.genotype": ("Genotype", "GenotypeError", "load_genotype"),
    "model.imagenet": ("build_imagenet_network",),
    "model.network": ("Network", "Supernet", "build_network", "build_supernet", "count_params"),
    "model.ops": ("SEARCH_SPACES", "OpOptions"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)
__version__ = "0.1.0"


def __getattr__(name: str):
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value  # found once; later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
