"""Entry point for `python jobs/score.py SRC OUT [options]` (also under `ray job submit`)."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
