"""Warnings of a run, kept: the library warns (an empty circuit, a faithfulness from a small gap,
a fallback of a method); a run records each message once in its summary file and prints it on
stderr, so that a caveat is never lost in the scroll of a progress bar."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from circuits import distributed


class Notes:
    """The warnings raised so far inside ``recorded_warnings``."""

    def __init__(self, caught: list[warnings.WarningMessage]):
        self._caught = caught

    @property
    def messages(self) -> list[str]:
        """Each distinct message once, in the order raised (libraries' deprecation notices
        are not caveats of the run and are left out)."""
        return list(dict.fromkeys(
            str(w.message) for w in self._caught
            if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning,
                                           FutureWarning))
        ))


@contextmanager
def recorded_warnings() -> Iterator[Notes]:
    """Collect every warning raised inside; print each distinct one on stderr at the end of a
    run that succeeded (a failed run's one line is its error, which says the same)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        notes = Notes(caught)
        yield notes
    if distributed.is_main():  # under torchrun the other ranks raise the same warnings
        for message in notes.messages:
            print(f"warning: {message}", file=sys.stderr)
