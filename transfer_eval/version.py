"""The suite's version: in every record, and in every cache key."""

__version__ = "0.1.0"
