"""A writer process for the crash test: resume the ledger at argv[1], append rounds until killed."""

from __future__ import annotations

import sys
from pathlib import Path

from gridsim.ledger import LedgerWriter

from .conftest import ORIGIN, SESSION, ledger_key, round_entries


def main() -> None:
    writer = LedgerWriter(Path(sys.argv[1]), ledger_key(0), ORIGIN)
    last = writer.last_round(SESSION)
    round_no = 0 if last is None else last + 1
    print("ready", writer.size, flush=True)
    while True:
        writer.append_block(round_entries(round_no, meters=3))
        round_no += 1


if __name__ == "__main__":
    main()
