"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os

# Keep TensorFlow's C++ logging quiet and deterministic before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
