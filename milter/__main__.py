"""``python -m milter`` is the ``milter`` command."""

import sys

from milter.cli import main

sys.exit(main())
