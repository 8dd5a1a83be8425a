"""Entry point for `ray job submit -- python jobs/crossval.py classify|segment SHARDS ...`."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["crossval", *sys.argv[1:]]))
