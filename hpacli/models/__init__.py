"""Classification models (backbones) and their shared pieces."""
