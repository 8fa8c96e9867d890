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
import importlib.metadata
import importlib.util
import sys
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
    """Is ``module`` installed (found on the path, with its distribution's metadata)?

    Looks without importing: podman-py alone (with requests, urllib3 and rich) is 8 MiB
    resident, and a node that only checks whether it could run containers must not pay
    that before its first container. A package shadowed by something without metadata
    (a stub, a stray directory) counts as absent; :func:`require` imports for real."""
    if module in sys.modules:
        return True
    try:
        if importlib.util.find_spec(module) is None:
            return False
        importlib.metadata.distribution(module.split(".")[0])  # each extra's name
    except (ImportError, ValueError, importlib.metadata.PackageNotFoundError):
        return False
    return True
