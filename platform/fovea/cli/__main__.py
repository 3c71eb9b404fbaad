"""``python -m fovea.cli``: the ``fovea`` command."""

import sys

from fovea.cli.main import main

sys.exit(main())
