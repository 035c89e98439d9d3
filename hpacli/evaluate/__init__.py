"""Mask encoding, the competition metric, submissions (writing and checking)."""
