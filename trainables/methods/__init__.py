"""One registry of methods, one file each. ``register`` refuses a duplicate name."""
from __future__ import annotations

from .base import Method

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} is already registered by {METHODS[cls.name].__module__}")
    METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(METHODS)}")
    return METHODS[name]


# import order = the paper's table order
from . import full, random, mixout, bitfit, magprune, adapter, lora, diffprune, childprune, sam  # noqa: E402,F401

__all__ = ["METHODS", "Method", "get_method", "register"]
