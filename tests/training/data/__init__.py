"""Tests of training.data, one module per module."""
