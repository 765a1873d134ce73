"""The root of user errors: something the user can fix (a wrong option, a folder that holds
other output, a model that is not there). The CLI prints one as one line and exits with code 2;
anything else is a bug and keeps its traceback."""

from __future__ import annotations


class RecaptionError(Exception):
    """A user error: its message names what is wrong and how to fix it."""
