"""Entry point for `python jobs/benchmark.py ingest|train|score|demo|gpu [options]` (also under `ray job submit`)."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", *sys.argv[1:]]))
