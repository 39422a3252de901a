"""Every registered model family through `cirbench.testing.check_encoder`, on a tiny model saved to disk
and loaded through the family's real path (as open_clip's per-model inference test; scikit-learn's
check_estimator): unit rows of the declared width, batch independence, determinism, modality refusal, and
a fingerprint that every vector-changing option changes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cirbench.models.registry import _FAMILIES
from cirbench.testing.conformance import ConformanceError, check_encoder
from tests.helpers import tiny

QWEN_TINY = {"min_image_tokens": 4, "max_image_tokens": 4}


def _qwen(root: Path) -> Path:
    return tiny.build_tiny_gme(root / "qwen")


# family -> (build the saved model under a folder -> name, options, options that change vectors)
CASES: dict[str, Callable[[Path], tuple[str, dict[str, Any], list[dict[str, Any]]]]] = {
    "hf-clip": lambda r: (f"hf-clip:{tiny.build_tiny_clip(r / 'clip')}", {},
                          [{"fusion": "image"}, {"max_length": 16}]),
    "open_clip": lambda r: (f"open_clip:local-dir:{tiny.build_tiny_open_clip(r / 'oc')}", {},
                            [{"fusion": "text"}]),
    "gme": lambda r: (f"gme:{_qwen(r)}", dict(QWEN_TINY), [{"max_image_tokens": 16}]),
    "rzen": lambda r: (f"rzen:{_qwen(r)}", dict(QWEN_TINY), [{"max_image_tokens": 16}]),
    "vlm2vec": lambda r: (f"vlm2vec:{_qwen(r)}", dict(QWEN_TINY), [{"position_ids": "mrope"}]),
    "recall": lambda r: (f"recall:{_qwen(r)}", dict(QWEN_TINY), []),
    "st": lambda r: (f"st:{tiny.build_tiny_sentence_transformer(r / 'st')}", {}, []),
    "e5v": lambda r: (f"e5v:{tiny.build_tiny_llava_next(r / 'llava')}", {}, [{"prompts": "fashioniq-dress"}]),
    "blip2": lambda r: (f"blip2:{tiny.build_tiny_blip2(r / 'blip2')}", {}, [{"max_length": 16}]),
    "mml-clip": lambda r: (f"mml-clip:{tiny.build_tiny_mml_clip(r / 'mml', tiny.build_tiny_clip(r / 'c'))}",
                           {"backbone": str(r / "c")}, [{"image_view": "satellite"}]),
}
NOT_HERE = {"precomputed": "vectors from a file: tests/test_evaluate.py and tests/test_bad_input.py"}


def test_every_family_has_a_case() -> None:
    assert set(_FAMILIES) == set(CASES) | set(NOT_HERE)


@pytest.mark.parametrize("family", sorted(CASES))
def test_family_conforms(family: str, tmp_path: Path) -> None:
    name, options, variants = CASES[family](tmp_path)
    check_encoder(name, vector_options=variants, **options)


PLUGIN = """
import numpy as np
from cirbench.models.base import ModelSpec


class Leaky:
    # vectors depend on the batch size; `scale` changes vectors but not the fingerprint
    def __init__(self, scale=1.0, leak=True):
        self.spec = ModelSpec(name="leaky", id="test/leaky", dim=4, modalities=("text",))
        self.scale, self.leak = scale, leak

    def fingerprint(self):
        return {"model": "leaky", "leak": self.leak}

    def encode(self, batch, *, role, instruction=None):
        rows = [[len(t or "") * self.scale, 1.0, len(batch.items) if self.leak else 0.0, 1.0]
                for t in batch.texts]
        return np.asarray(rows, dtype=np.float32)


def factory(**options):
    return Leaky(**options)
"""


def test_the_check_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "leaky_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConformanceError, match="depends on its batch"):
        check_encoder("leaky_plugin:factory", allow_plugins=True)
    with pytest.raises(ConformanceError, match="does not change the fingerprint"):
        check_encoder("leaky_plugin:factory", vector_options=[{"scale": 2.0}], allow_plugins=True, leak=False)
    check_encoder("leaky_plugin:factory", allow_plugins=True, leak=False)  # otherwise it conforms
