"""Low-level codecs below the store: channel PNGs (8/16-bit, checked), image ID rules and the
competition's mask RLE. Nothing here knows the store layout or any stage."""
