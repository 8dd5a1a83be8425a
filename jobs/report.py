"""Entry point for `ray job submit -- python jobs/report.py RUN_DIR [options]`: the run's report."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
