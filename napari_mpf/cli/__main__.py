"""``python -m napari_mpf.cli``: the same as ``napari-mpf``."""

import sys

from . import main

sys.exit(main())
