"""`python -m layerc`: the same command line as the `layerc` script."""

import sys

from .cli import main

sys.exit(main())
