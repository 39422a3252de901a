"""Built-in model adapters; importing this package registers them."""

from cirbench.models import baselines, clip, gme, openclip, text  # noqa: F401  (registers them)
from cirbench.models.base import Batch, Encoder, ModelSpec
from cirbench.models.registry import get_model, list_models, register_family, register_model

__all__ = ["Batch", "Encoder", "ModelSpec", "get_model", "list_models", "register_family", "register_model"]
