"""Entry point for `ray job submit -- python jobs/synth_lesions.py SRC OUT [options]`: lesions
synthesised on the lesion-free slices of a real archive."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["synth-lesions", *sys.argv[1:]]))
