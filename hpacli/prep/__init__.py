"""Preprocessing stages before training: duplicate search (dedup), folds, obvious-staining negatives."""
