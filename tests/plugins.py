"""Dropping a one-file engine or executor plugin onto its package's search path, for a test."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def drop_in(monkeypatch, package, folder: Path, module: str, source: str) -> str:
    """Write `source` as `folder/module.py` and put `folder` on `package`'s search path (undone
    with monkeypatch). Returns the plugin's full module name, for `forget`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module}.py").write_text(textwrap.dedent(source))
    if str(folder) not in package.__path__:
        monkeypatch.setattr(package, "__path__", [*package.__path__, str(folder)])
    return f"{package.__name__}.{module}"


def forget(*modules: str) -> None:
    """Unload plugins imported by a test, so the next test imports its own copy."""
    for name in modules:
        sys.modules.pop(name, None)
