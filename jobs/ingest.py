"""Entry point for `ray job submit -- python jobs/ingest.py SRC OUT [options]`: Parquet shards."""

import sys

from strokeray.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", *sys.argv[1:]]))
