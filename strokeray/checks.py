"""Argument checks shared by every layer's configs, so a bad value fails at once, before Ray starts."""

from __future__ import annotations


def check_positive(**values) -> None:
    """Raise ValueError naming each value that is not a positive number (None means "default")."""
    bad = [f"{name}={value!r}" for name, value in values.items() if value is not None and not value > 0]
    if bad:
        raise ValueError(f"must be positive: {', '.join(bad)}")


def check_range(name: str, value, lo: float, hi: float) -> None:
    """Raise ValueError unless lo <= value <= hi (None means "default")."""
    if value is not None and not lo <= value <= hi:
        raise ValueError(f"{name} must lie in [{lo:g}, {hi:g}], got {value!r}")


def check_choice(name: str, value, choices) -> None:
    """Raise ValueError unless value is one of choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
