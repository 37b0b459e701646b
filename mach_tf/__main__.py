"""``python -m mach_tf`` is the ``mach-tf`` command."""

import sys

from mach_tf.cli import main

sys.exit(main())
