"""Judges: the model comparing two candidate steps. Only the light, pure-Python parts are imported here."""

from .verdict import parse_verdict

__all__ = ["parse_verdict"]
