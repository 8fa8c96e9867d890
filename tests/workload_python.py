"""How tests run Python inside process workloads.

A root agent runs each workload as its own unprivileged user (docs/security.md), which can
reach neither a virtualenv under /root nor a checkout in a private directory (CI clones
into a 0700 temporary directory). So replicas run the system's Python, and a test's
helper script travels inline (``python3 -c SOURCE``), not as a path.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

WORKLOAD_PYTHON = ("/usr/bin/python3" if os.geteuid() == 0 and os.path.exists("/usr/bin/python3")
                   else sys.executable)


def inline_script(path: Path, *args: str) -> list[str]:
    """The command that runs the script at ``path`` (standard library only) in a replica."""
    return [WORKLOAD_PYTHON, "-c", path.read_text(), *args]


def inline_script_line(path: Path, *args: str) -> str:
    """The same as one shell-quoted line (for ``meshcloud run --command``)."""
    return " ".join(shlex.quote(word) for word in inline_script(path, *args))
