"""Tiny checkpoints in the key layouts LAVIS-based CIR code saves (HUG's HUGModel, SPRC/CSMCIR's models).

The LAVIS names are written out here from LAVIS's modules (blip2.py `init_vision_encoder`/`init_Qformer`,
eva_vit.py, Qformer.py), independently of the adapters' mapping: a tiny transformers BLIP-2 is built, the
key bias of its ViT's fused qkv zeroed (EVA's attention has biases for q and v only), and every tensor
saved under its LAVIS name, plus the LAVIS-only tensors the real files carry (the Q-Former's LM head,
`temp`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.helpers.tiny import build_tiny_blip2


def tiny_blip2_zero_k_bias(out_dir: Path, seed: int = 0) -> Path:
    """A tiny Blip2ForImageTextRetrieval dir whose ViT key biases are zero (so EVA's layout holds it)."""
    import torch
    from transformers import Blip2ForImageTextRetrieval

    d = build_tiny_blip2(out_dir, seed=seed)
    model = Blip2ForImageTextRetrieval.from_pretrained(d).eval()
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            b = layer.self_attn.qkv.bias
            n = b.shape[0] // 3
            b[n : 2 * n] = 0.0
    model.save_pretrained(d)
    return d


def lavis_state(blip2_dir: Path) -> dict[str, Any]:
    """The tiny BLIP-2's tensors under LAVIS Blip2Qformer's names."""
    import torch
    from transformers import Blip2ForImageTextRetrieval

    model = Blip2ForImageTextRetrieval.from_pretrained(blip2_dir).eval()
    out: dict[str, Any] = {}
    for k, v in model.state_dict().items():
        v = v.detach().clone()
        m = re.match(r"vision_model\.encoder\.layers\.(\d+)\.(.*)$", k)
        if m:
            i, rest = m.groups()
            blk = f"visual_encoder.blocks.{i}."
            if rest == "self_attn.qkv.bias":
                n = v.shape[0] // 3
                out[blk + "attn.q_bias"], out[blk + "attn.v_bias"] = v[:n].clone(), v[2 * n :].clone()
                continue
            rest = (rest.replace("layer_norm1", "norm1").replace("layer_norm2", "norm2")
                    .replace("self_attn.qkv", "attn.qkv").replace("self_attn.projection", "attn.proj"))
            out[blk + rest] = v
            continue
        m = re.match(r"qformer\.encoder\.layer\.(\d+)\.(.*)$", k)
        if m:
            i, rest = m.groups()
            rest = rest.replace("attention.attention.", "attention.self.")
            out[f"Qformer.bert.encoder.layer.{i}.{rest}"] = v
            continue
        name = {
            "vision_model.embeddings.class_embedding": "visual_encoder.cls_token",
            "vision_model.embeddings.position_embedding": "visual_encoder.pos_embed",
            "vision_model.embeddings.patch_embedding.weight": "visual_encoder.patch_embed.proj.weight",
            "vision_model.embeddings.patch_embedding.bias": "visual_encoder.patch_embed.proj.bias",
            "vision_model.post_layernorm.weight": "ln_vision.weight",
            "vision_model.post_layernorm.bias": "ln_vision.bias",
            "embeddings.word_embeddings.weight": "Qformer.bert.embeddings.word_embeddings.weight",
            "embeddings.position_embeddings.weight": "Qformer.bert.embeddings.position_embeddings.weight",
            "qformer.layernorm.weight": "Qformer.bert.embeddings.LayerNorm.weight",
            "qformer.layernorm.bias": "Qformer.bert.embeddings.LayerNorm.bias",
            "vision_projection.weight": "vision_proj.weight", "vision_projection.bias": "vision_proj.bias",
            "text_projection.weight": "text_proj.weight", "text_projection.bias": "text_proj.bias",
        }.get(k, k)  # query_tokens, itm_head.* keep their names
        out[name] = v
    hidden = model.config.qformer_config.hidden_size
    vocab = model.config.qformer_config.vocab_size
    out["temp"] = torch.tensor(0.07)
    out["Qformer.cls.predictions.bias"] = torch.zeros(vocab)
    out["Qformer.cls.predictions.transform.dense.weight"] = torch.randn(hidden, hidden)
    out["Qformer.cls.predictions.decoder.weight"] = out["Qformer.bert.embeddings.word_embeddings.weight"]
    return out


def hug_heads(hidden: int, seed: int = 1) -> Any:
    """HUG's three UncertaintyEstimators (models/uncertainty_head.py), randomised, as a module."""
    import torch
    from torch import nn

    class Estimator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer_layer = nn.TransformerEncoderLayer(d_model=hidden, nhead=4,
                                                                dim_feedforward=hidden * 4, dropout=0.1,
                                                                activation="gelu", batch_first=True)
            self.uncertainty_head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(0.1),
                                                  nn.Linear(hidden, hidden), nn.Softplus())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.uncertainty_head(self.transformer_layer(x))

    class Heads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.visual_uncertainty_estimator = Estimator()
            self.text_uncertainty_estimator = Estimator()
            self.multimodal_uncertainty_estimator = Estimator()

    torch.manual_seed(seed)
    heads = Heads().eval()
    with torch.no_grad():
        for p in heads.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return heads


def write_hug_checkpoint(path: Path, blip2_dir: Path, heads: Any) -> Path:
    """HUG's train.py checkpoint: {'epoch', 'model_state_dict', 'optimizer_state_dict', 'args'}."""
    import torch

    state = {f"blip_backbone.blip_model.{k}": v for k, v in lavis_state(blip2_dir).items()}
    state.update({k: v.detach().clone() for k, v in heads.state_dict().items()})
    q = state["blip_backbone.blip_model.query_tokens"]
    state["query_tokens"] = torch.randn_like(q)  # HUGModel's own, unused at inference
    path.parent.mkdir(parents=True, exist_ok=True)
    args = {"num_queries": int(q.shape[1]), "hidden_dim": int(q.shape[2]), "blip_model": "pretrain"}
    torch.save({"epoch": 3, "model_state_dict": state, "args": args,
                "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    return path
