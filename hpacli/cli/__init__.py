"""The `hpa` command line: parsing only; the work happens in the library."""
