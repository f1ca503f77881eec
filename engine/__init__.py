"""Engines behind the scripts: inference (tiling, chunked queries), evaluation and training loops."""
