"""Entry point for `ray job submit -- python jobs/compare.py CROSSVAL_A CROSSVAL_B ...`."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
