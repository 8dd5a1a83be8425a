"""Numpy-only imaging: HU windows, brain masks, crops and the per-task views.

Nothing here imports torch or Ray, so every function is testable in milliseconds.
"""
