"""The one cell-inference engine that ``hpa pseudolabel`` and ``hpa predict`` share.

* :mod:`.device` — the torch device from ``--device`` (also used by the trainers and the
  hpa-unet segmenter);
* :mod:`.forward` — a batch of uint8 cell crops through a model, averaged over test-time
  views (:mod:`hpacli.data.views`), in micro-batches, with AMP on GPU;
* :mod:`.blocks` — the block loop: cells in BlockWork blocks, crops cut by loader workers
  (:class:`hpacli.data.crops.CellBatches`), each block's results handed back for writing
  as soon as every input of the block is done;
* :mod:`.models` — model paths from ``--models`` (globs, commas).

Each stage keeps only what is its own (which model labels which cell, what is written).
"""
