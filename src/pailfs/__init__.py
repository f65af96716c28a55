"""pailfs: read-write separation for machine-learning jobs on object storage."""

__version__ = "0.1.0"
