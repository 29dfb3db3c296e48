"""`circuits` whose rank 1 fails while discover evaluates its circuit, after rank 0 has written
most of the run into its partial folder: run under torchrun by test_cli_distributed.py as
``-m tests.circuits.cli.failing_rank -- discover ...``."""

from __future__ import annotations

import sys

import circuits.cli.discover as discover
from circuits import distributed
from circuits.cli import main

MESSAGE = "rank 1 was told to fail (tests/circuits/cli/failing_rank.py)"
_faithfulness = discover.faithfulness


def faithfulness(*args, **kwargs):
    if distributed.rank() == 1:
        raise ValueError(MESSAGE)
    return _faithfulness(*args, **kwargs)


if __name__ == "__main__":
    discover.faithfulness = faithfulness  # type: ignore[assignment]
    sys.exit(main())
