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


def _hug(root: Path) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    from tests.helpers.lavis import hug_heads, tiny_blip2_zero_k_bias, write_hug_checkpoint

    blip2 = tiny_blip2_zero_k_bias(root / "blip2")
    ckpt = write_hug_checkpoint(root / "run" / "best_model.pth", blip2, hug_heads(32))
    return f"hug:{ckpt}", {"backbone": str(blip2)}, [{"max_length": 12}, {"uncertainty_heads": 2}]


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
    "hug": _hug,
    "mml-clip": lambda r: (f"mml-clip:{tiny.build_tiny_mml_clip(r / 'mml', tiny.build_tiny_clip(r / 'c'))}",
                           {"backbone": str(r / "c")}, [{"image_view": "satellite"}]),
}
ROLES = {"hug": {"query": ["image+text"], "document": ["image"]}}
"""Families whose two sides take different inputs (see check_encoder's `roles`)."""
NOT_HERE = {"precomputed": "vectors from a file: tests/test_evaluate.py and tests/test_bad_input.py"}


def test_every_family_has_a_case() -> None:
    assert set(_FAMILIES) == set(CASES) | set(NOT_HERE)


@pytest.mark.parametrize("family", sorted(CASES))
def test_family_conforms(family: str, tmp_path: Path) -> None:
    name, options, variants = CASES[family](tmp_path)
    check_encoder(name, vector_options=variants, roles=ROLES.get(family), **options)


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


def test_options_are_typed_before_the_family_loads(tmp_path: Path) -> None:
    """A mistyped value is refused by the family's declared table before its code runs: `alpha` only
    matters with fusion=weighted, so before the tables `alpha=abc` passed silently (here the loader would
    then fail on the missing directory instead)."""
    from cirbench import get_model

    with pytest.raises(ValueError, match="option 'alpha' must be a number, not 'abc'"):
        get_model(f"hf-clip:{tmp_path / 'missing'}", alpha="abc")
    with pytest.raises(ValueError, match="model 'random': option 'dim' must be an integer >= 1"):
        get_model("random", dim=0)
    with pytest.raises(TypeError, match="did you mean 'resolution'"):
        get_model("image-only", resoluton=64)


def test_every_alias_declares_its_options() -> None:
    from cirbench.models.registry import list_models, model_options

    for spec in list_models():
        table = model_options(spec.name)
        assert table, spec.name
        for option in table:
            assert option.help, (spec.name, option.name)
            option.parse(option.default)  # a declared default is a valid value


def test_check_encoder_checks_the_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """An alias whose table lacks an option the caller uses, or whose option has no help, fails."""
    from cirbench.core.options import Option
    from cirbench.models import baselines, registry

    entry = registry._MODELS["random"]
    with pytest.raises(ConformanceError, match=r"options \['scale'\] are used but not declared"):
        check_encoder("random", vector_options=[{"scale": 2}])
    bare = (Option("seed", "int"), Option("dim", "int", "width", 64))
    monkeypatch.setitem(registry._MODELS, "random", registry.ModelEntry(entry.spec, baselines._random, bare))
    with pytest.raises(ConformanceError, match="option 'seed' has no help text"):
        check_encoder("random")
    bad_default = (Option("seed", "int", "seed", "zero"),)
    monkeypatch.setitem(registry._MODELS, "random",
                        registry.ModelEntry(entry.spec, baselines._random, bad_default))
    with pytest.raises(ConformanceError, match="its declared default does not parse"):
        check_encoder("random")


def test_cirbench_models_name_lists_the_declared_options() -> None:
    import json

    from typer.testing import CliRunner

    from cirbench.cli import app

    r = CliRunner().invoke(app, ["models", "image-only", "--json"])
    assert r.exit_code == 0, r.output
    options = {o["name"]: o for o in json.loads(r.output)["options"]}
    assert set(options) == {"resolution", "channels_last", "device", "dtype"}
    assert options["resolution"]["type"] == "int" and options["resolution"]["default"] == 96
    r = CliRunner().invoke(app, ["models", "hf-clip"])
    assert r.exit_code == 0 and "alpha" in r.output and "choice: pil, torchvision" in r.output
    r = CliRunner().invoke(app, ["models", "hf-clipp"])
    assert r.exit_code != 0 and "did you mean 'hf-clip'" in r.output
