"""``python -m service``: see :mod:`service.cli`."""

import os
import sys

# Before TensorFlow is imported anywhere: hide its C++ info/warning chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from service.cli import main

sys.exit(main())
