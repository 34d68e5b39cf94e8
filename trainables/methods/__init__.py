"""One registry of methods (``registry``), one file each. Importing the package registers all ten."""
from __future__ import annotations

# import order = the paper's table order (the registry keeps it)
from . import full, random, mixout, bitfit, magprune, adapter, lora, diffprune, childprune, sam  # noqa: F401
from .base import Method
from .registry import METHODS, get_method, register

__all__ = ["METHODS", "Method", "get_method", "register"]
