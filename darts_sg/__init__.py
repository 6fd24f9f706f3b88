"""darts-sg: differentiable architecture search with the MobileNeXt sandglass block."""

from .genotype import Genotype, GenotypeError, load_genotype
from .imagenet import build_imagenet_network
from .network import Network, Supernet, build_network, build_supernet, count_params
from .ops import SEARCH_SPACES, OpOptions

__all__ = [
    "Genotype",
    "GenotypeError",
    "Network",
    "OpOptions",
    "SEARCH_SPACES",
    "Supernet",
    "build_imagenet_network",
    "build_network",
    "build_supernet",
    "count_params",
    "load_genotype",
]
__version__ = "0.1.0"
