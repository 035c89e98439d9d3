"""Label stages' library code: graph label de-noising (``graph_l1``), kNN graphs, selections."""
