"""hvae: hierarchical variational autoencoders in PyTorch (Ladder VAE, top-down and stacked hierarchies)."""

from . import presets
from .config import ModelConfig
from .configbase import ConfigError
from .files import DamagedFileError
from .model import HierarchicalVAE, ModelOutput, build_model, load
from .optim import make_optimizer

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DamagedFileError",
    "HierarchicalVAE",
    "ModelConfig",
    "ModelOutput",
    "build_model",
    "load",
    "make_optimizer",
    "presets",
]
