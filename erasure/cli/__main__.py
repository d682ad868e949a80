"""``python -m erasure.cli`` (and ``accelerate launch -m erasure.cli``) runs the ``erasure`` command."""

import sys

from erasure.cli import main

sys.exit(main())
