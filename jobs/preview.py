"""Entry point for `ray job submit -- python jobs/preview.py SRC OUT`: preprocessing previews."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["preview", *sys.argv[1:]]))
