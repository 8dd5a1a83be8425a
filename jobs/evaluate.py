"""Entry point for `ray job submit -- python jobs/evaluate.py BUNDLE SHARDS [--split test]`."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
