"""The one registry of methods: name -> class. ``register`` refuses a duplicate name.

A module of its own so that each method file imports it without importing the package that imports
the method files (which would be an import circle).
"""
from __future__ import annotations

from ..schema import did_you_mean
from .base import Method

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} is already registered by {METHODS[cls.name].__module__}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}{did_you_mean(name, METHODS)}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]
