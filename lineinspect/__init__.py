"""lineinspect: production-line visual inspection with INP-Former (shared CLI, settings, logging)."""

__version__ = "0.1.0"
