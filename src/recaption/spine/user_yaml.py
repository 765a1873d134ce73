"""YAML (and JSON, which YAML reads) from a user's file, loaded so that no file can cost more
than its size: aliases refused (a billion-laughs file expands nothing), nesting capped, the file
capped at MAX_BYTES and opened as a regular file only. Every problem is one UserFileError line
naming the file, what is wrong and the fix; typed checks of the fields are the caller's."""

from __future__ import annotations

import os

import yaml

from .errors import RecaptionError
from .files import read_input

MAX_BYTES = 1 << 20  # a settings file this size is already hand-written by no one
MAX_DEPTH = 32


class UserFileError(RecaptionError, ValueError):
    """A user's settings file that cannot be read as asked."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting while composing, before any object is
    built (expansion happens at construction, so it never starts)."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise UserFileError(f"line {mark.line + 1}: YAML aliases (*name) are not accepted; "
                                "write the value out")
        self.depth += 1
        if self.depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise UserFileError(f"line {mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_mapping(self, node, deep=False):
        """A key given twice is a mistake to say, not a value to drop silently."""
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise UserFileError(f"line {key_node.start_mark.line + 1}: {key!r} is given twice; keep one")
            seen.add(key) if isinstance(key, str | int | float | bool) else None
        return super().construct_mapping(node, deep=deep)


def load_yaml(path: str | os.PathLike, flag: str):
    """The document in `path`, a YAML or JSON file named by option `flag` (for messages)."""
    where = f"{flag} {os.fspath(path)}"
    try:
        data = read_input(path, MAX_BYTES)
    except FileNotFoundError:
        raise UserFileError(f"{where}: no such file") from None
    except OSError as exc:
        raise UserFileError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_BYTES:
        raise UserFileError(f"{where}: over {MAX_BYTES >> 10} KiB; a settings file is smaller than that")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserFileError(f"{where}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except UserFileError as exc:
        raise UserFileError(f"{where} {exc}") from None
    except yaml.YAMLError as exc:
        raise UserFileError(f"{where}: not YAML ({' '.join(str(exc).split())[:200]})") from None
    except RecursionError:
        raise UserFileError(f"{where}: nested too deeply") from None
