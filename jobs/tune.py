"""Entry point for `python jobs/tune.py classify|segment SHARDS [options]` (also under `ray job submit`)."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
