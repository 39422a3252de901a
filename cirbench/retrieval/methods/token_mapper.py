"""Token mappers (textual inversion): a CLIP image feature -> one pseudo-word embedding -> CLIP's text tower.

Pic2Word, SEARLE / SEARLE-XL and LinCIR (methods.md §6) train a small net that maps the *unnormalised*
CLIP image embedding of the reference to one token embedding. The query is then a text template with a
placeholder word ("a photo of $ that {text}"), encoded by CLIP's own text tower with the placeholder's
embedding replaced by the mapped one. The gallery is plain CLIP image features.

The replacement is a forward hook on the text tower's token-embedding layer (`nn.Embedding`): the real
transformers / open_clip forward runs unchanged (same tokenizer, causal mask, EOS pooling, projection),
and only the rows at the placeholder's id are swapped. With the placeholder's own embedding injected, the
output is exactly the ordinary forward's (tested).

Released checkpoints are read without running code (`torch.load(weights_only=True)` or safetensors) and
checked against the released key layout before anything is assigned:

| kind     | key in the file       | prefix    | net                                                  |
|----------|-----------------------|-----------|------------------------------------------------------|
| pic2word | `state_dict_img2text` | `module.` | [Linear(d, m) -> Dropout -> ReLU] x 2 -> fc_out      |
| searle   | `Phi`                 | none      | Linear(d, 4d) -> GELU -> Dropout -> Linear(4d, 4d)   |
|          |                       |           | -> GELU -> Dropout -> Linear(4d, w)                  |
| lincir   | `Phi`                 | none      | the same Phi class, sized from the CLIP config       |

The placeholder must be one BPE token with the id the net was trained with: `$` is 259 in CLIP's BPE
(SEARLE, LinCIR), `*` is 265 (Pic2Word: `tokenize(["*"])[0][1]`). An encoder whose tokenizer maps it
elsewhere (another vocabulary) is refused.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.types import Item
from cirbench.models._checkpoints import (
    CheckpointError,
    check_layout,
    find_checkpoint,
    read_checkpoint,
    state_dict_of,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MapperKind:
    """What a released mapping net looks like on disk and which placeholder it was trained with."""

    net: str
    """'pic2word' (IM2TEXT) or 'phi' (SEARLE's Phi)."""
    key: str
    prefix: str
    placeholder: str
    placeholder_id: int
    source: str


MAPPER_KINDS: dict[str, MapperKind] = {
    "pic2word": MapperKind(
        "pic2word",
        "state_dict_img2text",
        "module.",
        "*",
        265,
        "google-research/composed_image_retrieval (model/model.py IM2TEXT); weights: "
        "README's Google Drive ckpt or HF navervision/zeroshot-cir-models "
        "pic2word_large.pt",
    ),
    "searle": MapperKind(
        "phi",
        "Phi",
        "",
        "$",
        259,
        "miccunifi/SEARLE (src/phi.py); weights: GitHub release SEARLE_ViT-B32.pt / SEARLE_ViT-L14.pt",
    ),
    "lincir": MapperKind(
        "phi",
        "Phi",
        "",
        "$",
        259,
        "navervision/lincir (models.py Phi); weights: HF navervision/zeroshot-cir-models lincir_large.pt",
    ),
}
PIC2WORD_LAYERS = 2
"""IM2TEXT's default `n_layer` (every released checkpoint)."""
PHI_KEYS = tuple(f"layers.{i}.{p}" for i in (0, 3, 6) for p in ("weight", "bias"))
WEIGHT_NAMES = ("phi.safetensors", "pseudo_tokens.safetensors", "model.pt", "phi.pt")


def _expected_keys(kind: MapperKind) -> list[str]:
    if kind.net == "phi":
        return list(PHI_KEYS)
    return [f"layers.{i}.0.{p}" for i in range(PIC2WORD_LAYERS) for p in ("weight", "bias")] + [
        "fc_out.weight",
        "fc_out.bias",
    ]


def _build_net(kind: MapperKind, state: Mapping[str, torch.Tensor], dropout: float) -> torch.nn.Module:
    """The module tree of `kind`, sized from the checkpoint's own tensors (eval mode: dropout inactive)."""
    from torch import nn

    if kind.net == "phi":

        class PhiNet(nn.Module):
            """SEARLE's Phi structure: Linear -> GELU -> Dropout -> Linear -> GELU -> Dropout -> Linear."""

            def __init__(self) -> None:
                super().__init__()
                d_in, hidden = state["layers.0.weight"].shape[1], state["layers.0.weight"].shape[0]
                out = state["layers.6.weight"].shape[0]
                self.layers = nn.Sequential(
                    nn.Linear(d_in, hidden),
                    nn.GELU(),
                    nn.Dropout(dropout),
                    nn.Linear(hidden, hidden),
                    nn.GELU(),
                    nn.Dropout(dropout),
                    nn.Linear(hidden, out),
                )

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.layers(x)

        return PhiNet()

    class Pic2WordNet(nn.Module):
        """IM2TEXT's structure: n blocks of Linear -> Dropout -> ReLU, then the output Linear."""

        def __init__(self) -> None:
            super().__init__()
            blocks = []
            for i in range(PIC2WORD_LAYERS):
                w = state[f"layers.{i}.0.weight"]
                blocks.append(
                    nn.Sequential(nn.Linear(w.shape[1], w.shape[0]), nn.Dropout(dropout), nn.ReLU())
                )
            self.layers = nn.Sequential(*blocks)
            fc = state["fc_out.weight"]
            self.fc_out = nn.Linear(fc.shape[1], fc.shape[0])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc_out(self.layers(x))

    return Pic2WordNet()


class TokenMapper:
    """A released mapping net: unnormalised CLIP image features (n, d) -> pseudo-token embeddings (n, w)."""

    calls = "mapper_passes"

    def __init__(
        self,
        kind: str,
        weights: str | os.PathLike[str],
        *,
        l2_normalize: bool = False,
        placeholder: str | None = None,
        placeholder_id: int | None = None,
    ) -> None:
        from cirbench.core.options import did_you_mean

        if kind not in MAPPER_KINDS:
            raise ValueError(
                f"unknown token mapper {kind!r}{did_you_mean(kind, MAPPER_KINDS)}; "
                f"known: {', '.join(MAPPER_KINDS)}"
            )
        self.kind_name, self.kind = kind, MAPPER_KINDS[kind]
        self.path = find_checkpoint(weights, WEIGHT_NAMES, f"{kind} mapping net")
        state = state_dict_of(
            read_checkpoint(self.path),
            self.path,
            None if self.path.name.endswith(".safetensors") else self.kind.key,
        )
        if self.kind.prefix:
            bad = sorted(k for k in state if not k.startswith(self.kind.prefix))
            if bad:
                raise CheckpointError(
                    f"{self.path} is not a {kind} checkpoint in the released key layout: "
                    f"keys without the {self.kind.prefix!r} prefix {bad[:4]}"
                )
            state = {k[len(self.kind.prefix) :]: v for k, v in state.items()}
        check_layout(self.path, state, _expected_keys(self.kind), f"{kind} mapping net")
        self.net = _build_net(self.kind, state, 0.5 if self.kind.net == "phi" else 0.1)
        try:
            self.net.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1].strip()
            raise CheckpointError(
                f"{self.path}: the {kind} net's tensors do not fit together: {first}"
            ) from None
        self.net.eval()
        self.in_dim = int(next(iter(self.net.parameters())).shape[1])
        out_key = "layers.6.weight" if self.kind.net == "phi" else "fc_out.weight"
        self.out_dim = int(state[out_key].shape[0])
        self.l2_normalize = bool(l2_normalize)
        self.placeholder = placeholder or self.kind.placeholder
        self.placeholder_id = int(self.kind.placeholder_id if placeholder_id is None else placeholder_id)
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        self.name = f"token-mapper:{kind}:{self.path.name}"

    def fingerprint(self) -> dict[str, Any]:
        return {
            "component": "token-mapper",
            "kind": self.kind_name,
            "file": self.path.name,
            "sha256": self.sha256,
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "l2_normalize": self.l2_normalize,
            "placeholder": self.placeholder,
            "placeholder_id": self.placeholder_id,
        }

    def map(self, features: np.ndarray) -> np.ndarray:
        """(n, in_dim) image features -> (n, out_dim) token embeddings (float32)."""
        import torch

        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.in_dim:
            raise ValueError(
                f"{self.path.name}: the {self.kind_name} net takes {self.in_dim}-d image features, "
                f"the encoder gives {tuple(x.shape[1:])}"
            )
        if self.l2_normalize:
            x = torch.nn.functional.normalize(x, dim=-1)
        with torch.inference_mode():
            return np.asarray(self.net(x).float().numpy(), dtype=np.float32)


# ------------------------------------------------------------------------------------------ text tower


def _text_parts(encoder: Any) -> tuple[Any, torch.nn.Embedding]:
    """(tokenize texts -> ids, the token-embedding layer) of a CLIP encoder: transformers or open_clip."""
    model = getattr(encoder, "model", None)
    text_model = getattr(model, "text_model", None)
    if text_model is not None and hasattr(getattr(text_model, "embeddings", None), "token_embedding"):
        emb = text_model.embeddings.token_embedding
        tok = encoder.tokenizer

        def ids(texts: Sequence[str]) -> list[list[int]]:
            return [list(r) for r in tok(list(texts), add_special_tokens=False)["input_ids"]]

        return ids, emb
    if model is not None and hasattr(model, "token_embedding") and hasattr(model, "encode_text"):
        oc_tok = encoder.tokenizer

        def oc_ids(texts: Sequence[str]) -> list[list[int]]:
            out = []
            for row in oc_tok(list(texts)).tolist():
                body = [int(t) for t in row if t != 0]
                out.append(body[1:-1])  # drop start and end of text
            return out

        return oc_ids, model.token_embedding
    raise ValueError(
        f"{encoder.spec.name}: a token mapper needs a CLIP text tower with a token-embedding "
        "layer (hf-clip:... or open_clip:...)"
    )


def check_placeholder(encoder: Any, mapper: TokenMapper) -> None:
    """The encoder's tokenizer must map the placeholder to the one id the net was trained with."""
    ids, emb = _text_parts(encoder)
    got = ids([mapper.placeholder])[0]
    if got != [mapper.placeholder_id]:
        raise ValueError(
            f"{encoder.spec.name}: its tokenizer maps the placeholder {mapper.placeholder!r} to "
            f"{got}, not [{mapper.placeholder_id}] (the id {mapper.kind_name} was trained with): "
            "use a CLIP with the OpenAI BPE vocabulary"
        )
    dim = getattr(encoder.spec, "dim", None)
    if dim and int(dim) != mapper.in_dim:
        raise ValueError(
            f"{mapper.path.name}: the {mapper.kind_name} net takes {mapper.in_dim}-d image "
            f"features, but {encoder.spec.name}'s are {dim}-d"
        )
    if int(emb.weight.shape[1]) != mapper.out_dim:
        raise ValueError(
            f"{mapper.path.name}: the {mapper.kind_name} net makes {mapper.out_dim}-d tokens, but "
            f"{encoder.spec.name}'s text tower is {int(emb.weight.shape[1])}-d"
        )


@contextmanager
def injected(
    encoder: Any, placeholder_id: int, tokens: torch.Tensor, counts: dict[str, int]
) -> Iterator[None]:
    """While active, the text tower's token embedding of row i at `placeholder_id` is `tokens[i]`.

    Every occurrence in a row is replaced (as the released code does); a row without one is an error, and
    rows with several are counted in `counts['rows_with_extra_placeholders']`."""
    _, emb = _text_parts(encoder)

    def hook(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        import torch

        ids = args[0]
        if ids.shape[0] != tokens.shape[0]:
            raise RuntimeError(f"{ids.shape[0]} texts but {tokens.shape[0]} pseudo-tokens")
        at = ids == placeholder_id
        per_row = at.sum(dim=1)
        if bool((per_row == 0).any()):
            raise ValueError(
                "a templated query lost its placeholder token (truncated, or a template without it)"
            )
        counts["rows_with_extra_placeholders"] += int((per_row > 1).sum())
        return torch.where(at.unsqueeze(-1), tokens.to(output.dtype).to(output.device).unsqueeze(1), output)

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def raw_image_features(encoder: Any, items: Sequence[Item]) -> np.ndarray:
    """Unnormalised CLIP image embeddings (what the mapping nets were trained on), in the encoder's own
    preprocessing (its processor, its decode mode)."""
    import torch

    if not hasattr(encoder, "_image_features"):
        raise ValueError(f"{encoder.spec.name}: a token mapper needs a two-tower CLIP image encoder")
    with torch.inference_mode():
        prepared = encoder._image_inputs([encoder.read_image(it) for it in items])
        return np.asarray(encoder._image_features(prepared).float().cpu().numpy(), dtype=np.float32)


def pseudo_token_text_features(
    encoder: Any, texts: Sequence[str], tokens: np.ndarray, placeholder_id: int, counts: dict[str, int]
) -> np.ndarray:
    """Unit text features of `texts`, each with its placeholder's embedding replaced by its row of `tokens`,
    through the encoder's own text path (`_text_features`: its tokenizer, padding and forward)."""
    import torch

    with torch.inference_mode(), injected(encoder, placeholder_id, torch.as_tensor(tokens), counts):
        out = encoder._text_features(list(texts))
    return np.asarray(torch.nn.functional.normalize(out.float(), dim=-1).cpu().numpy(), dtype=np.float32)


def build_mapper(cfg: Mapping[str, Any], where: str, *, base: Path | None = None) -> TokenMapper:
    """`{kind: pic2word|searle|lincir, weights: FILE_OR_DIR[, l2_normalize: false]}`."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{where}: a token mapper is a mapping with 'kind' and 'weights'")
    known = {"kind", "weights", "l2_normalize"}
    extra = set(cfg) - known
    if extra:
        raise ValueError(f"{where}: unknown token mapper option(s) {sorted(extra)}; known: {sorted(known)}")
    kind = str(cfg.get("kind"))
    if not cfg.get("weights"):
        src = MAPPER_KINDS[kind].source if kind in MAPPER_KINDS else "its release"
        raise ValueError(
            f"{where}.weights: the {kind} mapping net's checkpoint file is required "
            f"(--method-option components.mapper.weights=PATH; from {src})"
        )
    path = Path(os.path.expanduser(str(cfg["weights"])))
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        return TokenMapper(kind, path, l2_normalize=bool(cfg.get("l2_normalize", False)))
    except CheckpointError as e:
        raise ValueError(str(e)) from None


__all__ = [
    "MAPPER_KINDS",
    "MapperKind",
    "TokenMapper",
    "build_mapper",
    "check_placeholder",
    "injected",
    "pseudo_token_text_features",
    "raw_image_features",
]
