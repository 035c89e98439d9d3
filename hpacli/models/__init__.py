"""The one place that builds and loads models: backbones from the registry with their
config stamped (:mod:`.build`), checkpoints and their metadata (:mod:`.checkpoint`),
the out-of-fold record (:mod:`.trained_on`), weight files (:mod:`.weightfile`).

Nothing here ever downloads: the Hugging Face hub is switched off before timm is imported
(this is the only place hpacli sets it; every timm import goes through this package).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
