"""Built-in model adapters; importing this package registers them."""

from cirbench.models import (  # noqa: F401  (importing registers them)
    baselines,
    blip2,
    clip,
    e5v,
    embedded,
    gme,
    hug,
    mmlclip,
    openclip,
    recall,
    text,
    vlm,
)
from cirbench.models.base import Batch, Encoder, ModelSpec
from cirbench.models.registry import get_model, list_models, register_family, register_model

__all__ = ["Batch", "Encoder", "ModelSpec", "get_model", "list_models", "register_family", "register_model"]
