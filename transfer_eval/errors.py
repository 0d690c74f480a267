"""The one exception a user can cause: the CLI prints its message on one line and exits with status 2."""

import difflib


class UserError(Exception):
    """Bad input: an unknown name, a malformed file, missing data. Never a bug in the suite."""


def unknown_name(kind: str, name: str, known, hint: str = "") -> UserError:
    """An error for an unknown `name` that suggests the closest known names."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    if close:
        suggestion = "did you mean " + ", ".join(repr(c) for c in close) + "?"
    else:
        suggestion = f"known: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}"
    return UserError(f"unknown {kind} {name!r}; {suggestion}{' ' + hint if hint else ''}")
