"""Helpers for tests, here and in users' own suites: tiny random models that load through real loaders.

Importing this package is cheap; the builders import torch/transformers only when called.
"""

from cirbench.testing.conformance import ConformanceError, check_encoder, check_task
from cirbench.testing.tiny import (
    build_tiny_clip,
    build_tiny_gme,
    build_tiny_open_clip,
    build_tiny_sentence_transformer,
    build_tiny_siglip,
    build_tiny_siglip2,
    demo_images,
    image_files,
    put_in_hub_cache,
)

__all__ = ["ConformanceError", "build_tiny_clip", "build_tiny_gme", "build_tiny_open_clip",
           "build_tiny_sentence_transformer", "build_tiny_siglip", "build_tiny_siglip2",
           "check_encoder", "check_task",
           "demo_images", "image_files", "put_in_hub_cache"]
