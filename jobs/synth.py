"""Entry point for `ray job submit -- python jobs/synth.py OUT [options]`: phantom archives."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth", *sys.argv[1:]]))
