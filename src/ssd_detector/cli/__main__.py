"""``python -m ssd_detector.cli``: the same as the ``ssd-detector`` command."""
import sys

from . import main

sys.exit(main())
