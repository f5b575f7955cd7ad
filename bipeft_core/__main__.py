"""``python -m bipeft_core`` runs the ``bipeft`` command."""

import sys

from bipeft_core.cli import main

sys.exit(main())
