"""Benchmarks (``action-ray bench NAME``): each prints a ratio measured side by side in one run.

Speed and memory targets are checked here, never by timed tests.
"""
