"""``python -m pullhealth_dev`` is the ``pullhealth-dev`` command."""

import sys

from pullhealth_dev.cli import main

sys.exit(main())
