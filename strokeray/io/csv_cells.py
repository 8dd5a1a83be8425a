"""CSV cells that a spreadsheet shows as text, never runs as a formula (file names are untrusted)."""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: str) -> str:
    """``value`` with a leading apostrophe when a spreadsheet would read it as a formula (OWASP)."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value
