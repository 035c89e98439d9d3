"""Cell-level prediction (``hpa predict``): ensemble, test-time views, negative rule, exports."""
