"""Cell segmentation: the weight-free ``classical`` segmenter, our DPN92-UNet (``hpa-unet``)
with a restricted loader for the official HPA weight files, the post-processing from network
maps to labelled nuclei and cells (:func:`label_cells_from_maps`), and the ``segment`` stage.

Nothing heavy is imported here; import the submodules.
"""
