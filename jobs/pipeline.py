"""Entry point for `ray job submit -- python jobs/pipeline.py [options]`: the whole pipeline."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
