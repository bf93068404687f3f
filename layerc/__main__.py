"""`python -m layerc`: the same command line as the `layerc` script."""

import sys

from .cli import entry

sys.exit(entry())
