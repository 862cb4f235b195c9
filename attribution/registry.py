"""Lazy name → ``"module:Attribute"`` registries: what the baseline and detector registries share."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def resolve(registry: Mapping[str, str], name: str, what: str) -> Any:
    """The attribute ``registry[name]`` points at, importing its module on first use.

    KeyError naming the known entries when ``name`` is not registered (``what`` says what kind of entry it is).
    """
    try:
        module_name, attr = registry[name].split(":")
    except KeyError:
        raise KeyError(f"unknown {what} {name!r}; known: {', '.join(registry)}") from None
    return getattr(importlib.import_module(module_name), attr)
