"""Reading images, the pixel cache, ingest, cell crops and synthetic data."""
