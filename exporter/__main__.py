"""`python -m exporter` is the same as `mixpeek-exporter`."""

import sys

from exporter.cli import main

sys.exit(main())
