"""Registries: every extension point of hvae has the same shape, a dict from a config name to a class.

* :data:`LATENT_FAMILIES` -- ``model.latent_types`` -> a :class:`hvae.distributions.LatentFamily` subclass
  (:mod:`hvae.distributions`, :mod:`hvae.quantize`);
* :data:`LIKELIHOODS` -- ``model.likelihood`` -> a :class:`hvae.likelihoods.ObservationModel` subclass
  (:mod:`hvae.likelihoods`);
* ``hvae.data.sources.SOURCES`` -- ``data.source`` -> a :class:`hvae.data.sources.Source` subclass;
* :data:`CELL_FAMILIES` (``hvae.nets.FAMILIES``) -- ``model.block`` -> a :class:`hvae.nets.CellFamily` subclass
  (:mod:`hvae.nets`).

A class joins with the decorator ``@REGISTRY.register("name")``; the configs accept exactly the registered
names, so a new one needs no edit elsewhere. Each registered module's docstring says what its classes must
define. This module is plain Python (no torch), so the configs can check names without importing the model;
the built-in classes are imported on the first question asked of a registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

__all__ = ["CELL_FAMILIES", "LATENT_FAMILIES", "LIKELIHOODS", "Registry"]


class Registry(dict):
    """``name -> class`` for one extension point; ``what`` names it in messages (e.g. "latent type").

    ``builtins`` are the modules that register the built-in classes: they are imported before the first
    lookup, so a config can check a name before the model's modules are loaded.
    """

    def __init__(self, what: str, builtins: tuple[str, ...] = ()):
        super().__init__()
        self.what = what
        self._builtins = builtins
        self._loaded = not builtins

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` above a class adds it under ``name``."""

        def add(cls: T) -> T:
            old = dict.get(self, name)
            if old is not None and old is not cls:
                raise ValueError(f"{self.what} {name!r} is already registered ({old.__name__}); choose another name")
            self[name] = cls
            return cls

        return add

    def __contains__(self, name: object) -> bool:
        self._load()
        return super().__contains__(name)

    def __iter__(self) -> Iterator[str]:
        self._load()
        return super().__iter__()

    def __getitem__(self, name: str):
        self._load()
        return super().__getitem__(name)

    def __missing__(self, name: str):
        raise ValueError(f"unknown {self.what} {name!r}; use one of {self.choices()} (or register one)")

    def choices(self) -> str:
        """The registered names as a config message lists them: ``'a' | 'b'``."""
        return " | ".join(repr(n) for n in self)


LATENT_FAMILIES = Registry("latent type", ("hvae.distributions", "hvae.quantize"))
LIKELIHOODS = Registry("likelihood", ("hvae.likelihoods",))
CELL_FAMILIES = Registry("block", ("hvae.nets",))
