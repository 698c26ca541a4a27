"""``python -m pullhealth`` is the CLI."""

import sys

from pullhealth.cli import main

sys.exit(main())
