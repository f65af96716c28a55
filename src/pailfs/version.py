"""The version of pailfs (its own module: every layer may read it)."""

__version__ = "0.1.0"
