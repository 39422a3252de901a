"""LAVIS's BLIP-2 first stage (`Blip2Qformer` and its CIR forks) in transformers' BLIP-2 classes.

HUG and CSMCIR save state dicts of LAVIS modules, not transformers directories. Their BLIP-2 part has LAVIS's
names (the ones transformers' own conversion script, convert_blip_2_original_to_pytorch.py, renames):

LAVIS name -> transformers `Blip2ForImageTextRetrieval` name:

- `visual_encoder.cls_token`, `.pos_embed`, `.patch_embed.proj.*` -> `vision_model.embeddings.`
  `class_embedding`, `position_embedding`, `patch_embedding.*`;
- `visual_encoder.blocks.N.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2}` ->
  `vision_model.encoder.layers.N.{layer_norm1,layer_norm2,self_attn.qkv,self_attn.projection,mlp.fc1,mlp.fc2}`;
- `visual_encoder.blocks.N.attn.{q_bias,v_bias}` -> `...self_attn.qkv.bias` = [q_bias, 0, v_bias] (EVA's
  key projection has no bias);
- `ln_vision` -> `vision_model.post_layernorm`;
- `Qformer.bert.embeddings.{word,position}_embeddings` -> `embeddings.*`; its `LayerNorm` ->
  `qformer.layernorm`;
- `Qformer.bert.encoder.layer.N.{attention,crossattention}.self` -> `qformer.encoder.layer.N.{...}.attention`,
  the rest of `Qformer.bert.encoder` -> `qformer.encoder`;
- `vision_proj`, `text_proj` -> `vision_projection`, `text_projection`; `query_tokens`, `itm_head` kept.

LAVIS also saves the Q-Former's language-model head (`Qformer.cls.*`, for captioning), the ITC temperature
`temp` and an old `position_ids` buffer; no embedding uses them, so they may be present or not. Every other
key must be there with the configuration's shape, or the file is refused (naming the keys).

The checkpoint carries no configuration: the architecture, the tokenizer (bert-base-uncased + `[DEC]`, as
LAVIS's `init_tokenizer`) and the image processor come from a transformers BLIP-2 directory or hub id, the
`backbone` option (default Salesforce/blip2-itm-vit-g, whose configuration is LAVIS's `pretrain`: EVA ViT-g
with 39 blocks, a 12-layer Q-Former with cross-attention every 2nd layer, 32 query tokens, 256-d projections).

The three Q-Former passes below are LAVIS's `Qformer.bert(...)` calls in transformers terms.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cirbench.models import _checkpoints as C

if TYPE_CHECKING:
    import torch

BACKBONE = "Salesforce/blip2-itm-vit-g"
LAVIS_UNUSED = ("temp", "Qformer.bert.embeddings.position_ids")
LAVIS_UNUSED_PREFIX = "Qformer.cls."

_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
    (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
    (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.", r"visual_encoder.blocks.\1.norm1."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.", r"visual_encoder.blocks.\1.norm2."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.weight$",
     r"visual_encoder.blocks.\1.attn.qkv.weight"),
    (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.",
     r"visual_encoder.blocks.\1.attn.proj."),
    (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
    (r"^vision_model\.post_layernorm\.", "ln_vision."),
    (r"^embeddings\.", "Qformer.bert.embeddings."),
    (r"^qformer\.layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
    (r"^qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.",
     r"Qformer.bert.encoder.layer.\1.\2.self."),
    (r"^qformer\.encoder\.", "Qformer.bert.encoder."),
    (r"^vision_projection\.", "vision_proj."),
    (r"^text_projection\.", "text_proj."),
    (r"^(query_tokens|itm_head\..*)$", r"\1"),
)
_QKV_BIAS = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.bias$")


def lavis_name(hf_key: str) -> str:
    """The LAVIS name of one transformers BLIP-2 parameter (not the fused qkv bias: see `lavis_names`)."""
    for pattern, repl in _RENAMES:
        if re.search(pattern, hf_key):
            return re.sub(pattern, repl, hf_key)
    raise KeyError(f"no LAVIS name for the transformers BLIP-2 parameter {hf_key!r}")


def lavis_names(hf_keys: Sequence[str]) -> dict[str, list[str]]:
    """transformers key -> the LAVIS key(s) it is made from (two for a ViT block's qkv bias)."""
    out: dict[str, list[str]] = {}
    for k in hf_keys:
        m = _QKV_BIAS.match(k)
        out[k] = ([f"visual_encoder.blocks.{m.group(1)}.attn.q_bias",
                   f"visual_encoder.blocks.{m.group(1)}.attn.v_bias"] if m else [lavis_name(k)])
    return out


def blip2_config(backbone: str, revision: str | None) -> Any:
    """The BLIP-2 configuration of `backbone` (a retrieval one: the Q-Former takes text)."""
    from transformers import Blip2Config

    from cirbench.models import _torch as T

    cfg = T.checked_config(backbone, revision, trust_remote_code=False, model_type="blip-2",
                           needs="the backbone option names a transformers BLIP-2 configuration")
    if not (cfg.get("qformer_config") or {}).get("use_qformer_text_input", False):
        raise ValueError(f"{backbone}: a BLIP-2 configuration without the Q-Former's text input; the "
                         "backbone must be a retrieval (ITM) one such as Salesforce/blip2-itm-vit-g")
    return Blip2Config.from_dict(cfg)


def load_lavis_blip2(path: Path, state: Mapping[str, torch.Tensor], config: Any, what: str,
                     prefix: str = "", ignore: Sequence[str] = ()) -> Any:
    """A `Blip2ForImageTextRetrieval` holding the LAVIS tensors `state[prefix + name]`.

    Keys under `prefix` must be exactly the BLIP-2 layout (plus LAVIS's unused ones and the caller's
    `ignore`); the caller checks the keys outside `prefix`. Refused with one line before anything is built
    from the file's tensors.
    """
    import torch
    from transformers import Blip2ForImageTextRetrieval

    from cirbench.models import _torch as T

    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    with T.quiet_transformers():
        model = Blip2ForImageTextRetrieval(config).eval()
    target = model.state_dict()
    names = lavis_names(list(target))
    optional = {*LAVIS_UNUSED, *ignore, *(k for k in sub if k.startswith(LAVIS_UNUSED_PREFIX))}
    expected = [n for ns in names.values() for n in ns]
    C.check_layout(path, (prefix + k for k in sub), (prefix + n for n in expected), what,
                   optional=(prefix + n for n in optional))
    mapped: dict[str, torch.Tensor] = {}
    for hf_key, (first, *rest) in names.items():
        if rest:  # EVA's qkv: a bias for q and v only
            q, v = sub[first], sub[rest[0]]
            if q.shape != v.shape or q.ndim != 1:
                raise C.CheckpointError(f"{path}: {prefix}{first} {tuple(q.shape)} and {prefix}{rest[0]} "
                                        f"{tuple(v.shape)} are not one bias each")
            mapped[hf_key] = torch.cat([q, torch.zeros_like(q), v])
        else:
            mapped[hf_key] = sub[first]
    C.check_shapes(path, mapped, target, {k: k for k in mapped}, f"{what} BLIP-2 ({BACKBONE}-style backbone)")
    model.load_state_dict(mapped, strict=True)
    return model


# ---------------------------------------------------------------------------------------- Q-Former passes
def vision(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """`ln_vision(visual_encoder(image))`: the ViT's patch features after the final LayerNorm."""
    dtype = model.vision_model.embeddings.patch_embedding.weight.dtype
    return model.vision_model(pixel_values=pixels.to(dtype)).last_hidden_state


def image_pass(model: Any, image_embeds: torch.Tensor) -> torch.Tensor:
    """`Qformer.bert(query_embeds=query_tokens, encoder_hidden_states=image)`: (n, queries, hidden)."""
    import torch

    q = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    att = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    return model.qformer(query_embeds=q, encoder_hidden_states=image_embeds,
                         encoder_attention_mask=att).last_hidden_state


def fused_pass(model: Any, ids: torch.Tensor, mask: torch.Tensor, query: torch.Tensor,
               image_embeds: torch.Tensor | None) -> torch.Tensor:
    """`Qformer.bert(text, query_embeds=query, attention_mask=[1..; mask], encoder_hidden_states=image)`:
    (n, queries + tokens, hidden). Without `image_embeds` it is SPRC's second pass over the fused query
    tokens: SPRC's Q-Former (its "baiyang change" in Qformer.py) then runs every position, query tokens
    included, through self-attention and the *text* feed-forward, with no cross-attention, which is
    transformers' Q-Former with `query_length=0`."""
    import torch

    n_query = query.shape[1]
    emb = model.embeddings(input_ids=ids, query_embeds=query)
    full = torch.cat([torch.ones(query.shape[:-1], dtype=mask.dtype, device=mask.device), mask], dim=1)
    if image_embeds is None:
        return model.qformer(query_embeds=emb, query_length=0, attention_mask=full).last_hidden_state
    att = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
    return model.qformer(query_embeds=emb, query_length=n_query, attention_mask=full,
                         encoder_hidden_states=image_embeds, encoder_attention_mask=att).last_hidden_state


def text_pass(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`Qformer.bert(text, attention_mask=mask)`: the text alone, (n, tokens, hidden)."""
    return model.qformer(query_embeds=model.embeddings(input_ids=ids), query_length=0,
                         attention_mask=mask).last_hidden_state
