"""``python -m training``: see :mod:`training.cli`."""

import os
import sys

# Before TensorFlow is imported anywhere: hide its C++ info/warning chatter.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training.cli import main

sys.exit(main())
