"""``python -m jaxsim`` is the ``jaxsim`` command."""

import sys

from jaxsim.cli import main

sys.exit(main())
