"""File IO without Lightning: atomic writes (and, later, every weight-file format)."""

from mtlora.io.atomic import DiskFullError, write_atomic, write_json_atomic, write_text_atomic

__all__ = ["DiskFullError", "write_atomic", "write_json_atomic", "write_text_atomic"]
