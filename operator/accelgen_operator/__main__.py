"""``python -m accelgen_operator`` = ``accelgen-operator``."""

import sys

from accelgen_operator.cli import main

sys.exit(main())
