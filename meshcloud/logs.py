"""Structured logging: one JSON object per line in the data dir, readable lines on stderr.

Modules log with ``logging.getLogger(__name__)`` and put facts in ``extra`` (``peer``,
``workload``, ``why``...): the JSON file keeps them as fields, the console shows them as
``key=value``. Secrets are never passed to a logger (keys, tokens, invite seeds).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from pathlib import Path

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **{k: _jsonable(v) for k, v in _fields(record).items()},
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extras = " ".join(f"{k}={_jsonable(v)}" for k, v in _fields(record).items())
        line = f"{stamp} {record.levelname.lower():7} {record.name}: {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()[:12]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def setup_logging(level: str, log_file: Path | None, *, console: bool = True,
                  node: str = "") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.setLevel(level.upper())
    if console:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(ConsoleFormatter())
        root.addHandler(handler)
    if log_file is not None:
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=10 << 20, backupCount=3)
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    for noisy in ("hypercorn.access", "hypercorn.error", "urllib3", "podman"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
