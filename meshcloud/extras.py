"""Optional extras: features whose packages a core install (a phone, a small board) lacks.

The core install is what Termux builds without trouble (trio, pynacl, cbor2, lmdb, zfec,
the pure-Python web stack). Everything else is an extra of ``pyproject.toml``, imported
only where used, through :func:`require`, so that a missing package is one clear error
naming the extra to install instead of an ``ImportError`` deep in a traceback:

* ``containers``: podman-py (the podman runtime; a node without it runs processes only);
* ``sim``: matplotlib (plots of ``python -m sim``);
* ``spark``: pyspark (the Spark client side).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from meshcloud.errors import MeshError

EXTRAS = {"podman": "containers", "matplotlib": "sim", "pyspark": "spark"}
"""Top-level module → the extra that installs it."""


class MissingExtraError(MeshError):
    """A feature needs an optional package this install does not have."""

    code = "missing_extra"


def require(module: str, feature: str) -> ModuleType:
    """``module`` imported, or :class:`MissingExtraError` saying which extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, top)
        raise MissingExtraError(
            f"{feature} needs the optional package {top!r}, not installed here: "
            f"pip install 'meshcloud[{extra}]'") from None


def has(module: str) -> bool:
    """Can ``module`` be imported (without raising)?"""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
