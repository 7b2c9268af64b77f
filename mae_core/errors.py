"""One base for the mistakes a user can fix, so that every tool reports them the same way.

A bad file, key, value, folder or dataset is a `UserError` (or a subclass): the tools catch that
one base, print `<tool>.py: error: <message>` on stderr and exit with status 1, never a traceback.
Anything else is a bug in the toolkit and keeps its traceback."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A mistake the user can fix; the message names the file, key or value at fault."""


@contextmanager
def exit_on_user_error(tool: str) -> Iterator[None]:
    """Runs a tool's body; a `UserError` ends the process with exit status 1 and
    `<tool>: error: <message>` on stderr."""
    try:
        yield
    except UserError as exc:
        raise SystemExit(f"{tool}: error: {exc}") from None
