"""``python -m qualityfits``: the command-line interface."""

import sys

from qualityfits.cli import main

sys.exit(main())
