"""Tiny random models saved to a directory, so tests run the adapters' real loading code without the hub.

Each builder writes a directory in the exact layout a hub snapshot has (config, weights as safetensors,
tokenizer, image processor) and returns it; pass that path wherever a hub id would go
(`hf-clip:<dir>`, `gme:<dir>`, `open_clip:local-dir:<dir>`, `st:<dir>`). Weights are random but seeded, so a
directory built twice holds the same numbers. Each build takes well under a second and a few hundred kB.

Recipe (transformers 5.x): tokenizers are built in memory from a byte-level alphabet (every string
tokenizes, no merges needed); image processors are constructed with tiny sizes; `torch.manual_seed` before
the model constructor makes weights reproducible. torch/transformers are imported inside the builders.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]

QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def has_torchvision() -> bool:
    """transformers 5.x picks torchvision-backed image processors when torchvision imports, PIL ones else."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False
    return True


def _image_processor(kind: str, **kw: Any) -> Any:
    import transformers

    name = kind if has_torchvision() else kind + "Pil"
    return getattr(transformers, name)(**kw)


def byte_vocab(specials: list[str], end_of_word: str | None = None) -> dict[str, int]:
    """Special tokens + the 256 ByteLevel symbols (+ end-of-word variants): enough to tokenize anything."""
    from tokenizers.pre_tokenizers import ByteLevel

    vocab: dict[str, int] = {}
    for s in specials:
        vocab[s] = len(vocab)
    alphabet = sorted(ByteLevel.alphabet())
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    if end_of_word:
        for ch in alphabet:
            vocab.setdefault(ch + end_of_word, len(vocab))
    return vocab


def demo_images(n: int = 3, size: int | tuple[int, int] = 48, seed: int = 0) -> list[Any]:
    """Random RGB PIL images (different from each other), for feeding encoders in tests."""
    import numpy as np
    from PIL import Image

    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def _clip_tokenizer(model_max_length: int = 77, **kw: Any) -> Any:
    from transformers import CLIPTokenizer

    specials = ["<|startoftext|>", "<|endoftext|>"] if not kw else [kw["pad_token"], kw["eos_token"],
                                                                     kw["unk_token"]]
    vocab = byte_vocab(specials, end_of_word=None if kw else "</w>")
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length, **kw)


def build_tiny_clip(out_dir: str | os.PathLike[str], *, image_size: int = 32, hidden: int = 32,
                    layers: int = 2, projection_dim: int = 16, seed: int = 0) -> Path:
    """A random transformers CLIPModel + CLIPProcessor (byte-level tokenizer, 32 px images)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _clip_tokenizer(77)
    improc = _image_processor("CLIPImageProcessor", size={"shortest_edge": image_size},
                              crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=improc, tokenizer=tok).save_pretrained(out)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37,
                         num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=hidden, intermediate_size=37,
                           num_hidden_layers=layers, num_attention_heads=4),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).eval().save_pretrained(out)
    return out


def build_tiny_siglip(out_dir: str | os.PathLike[str], *, image_size: int = 32, hidden: int = 32,
                      layers: int = 2, max_length: int = 16, seed: int = 0) -> Path:
    """A random SiglipModel + SiglipProcessor. SiglipTokenizer needs sentencepiece, so a byte-level BPE
    tokenizer stands in (the processor accepts any tokenizer AutoTokenizer can reload)."""
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _clip_tokenizer(max_length, bos_token="<unk>", eos_token="</s>", pad_token="<pad>",
                          unk_token="<unk>")
    improc = _image_processor("SiglipImageProcessor", size={"height": image_size, "width": image_size})
    SiglipProcessor(image_processor=improc, tokenizer=tok).save_pretrained(out)
    cfg = SiglipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37,
                         num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=max_length,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=hidden, intermediate_size=37,
                           num_hidden_layers=layers, num_attention_heads=4),
    )
    torch.manual_seed(seed)
    SiglipModel(cfg).eval().save_pretrained(out)
    return out


def build_tiny_siglip2(out_dir: str | os.PathLike[str], *, patch: int = 8, max_num_patches: int = 16,
                       hidden: int = 32, layers: int = 2, max_length: int = 16, seed: int = 0) -> Path:
    """A random Siglip2Model (NaFlex: variable-resolution patches) + Siglip2Processor."""
    import torch
    from transformers import Siglip2Config, Siglip2Model, Siglip2Processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _clip_tokenizer(max_length, bos_token="<unk>", eos_token="</s>", pad_token="<pad>",
                          unk_token="<unk>")
    improc = _image_processor("Siglip2ImageProcessor", patch_size=patch, max_num_patches=max_num_patches)
    Siglip2Processor(image_processor=improc, tokenizer=tok).save_pretrained(out)
    cfg = Siglip2Config(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37,
                         num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=max_length,
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id),
        vision_config=dict(num_patches=max_num_patches, patch_size=patch, hidden_size=hidden,
                           intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4),
    )
    torch.manual_seed(seed)
    Siglip2Model(cfg).eval().save_pretrained(out)
    return out


def build_tiny_gme(out_dir: str | os.PathLike[str], *, hidden: int = 32, layers: int = 2,
                   min_pixels: int = 56 * 56, max_pixels: int = 56 * 56, seed: int = 0) -> Path:
    """A random Qwen2-VL (the GME architecture): Qwen2VLForConditionalGeneration, tokenizer, image processor.

    14 px patches merged 2x2: a 56x56 image becomes 4 image tokens. The tokenizer and image processor are
    saved on their own as well as inside a Qwen2VLProcessor (which needs torchvision in transformers 5.x).
    """
    import torch
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Qwen2Tokenizer(vocab=byte_vocab(QWEN_SPECIALS), merges=[], model_max_length=4096)
    tok.add_tokens([AddedToken(t, special=True) for t in QWEN_SPECIALS])
    ids: dict[str, int] = {t: int(tok.convert_tokens_to_ids(t)) for t in QWEN_SPECIALS}  # type: ignore[arg-type]
    improc = _image_processor("Qwen2VLImageProcessor", min_pixels=min_pixels, max_pixels=max_pixels,
                              patch_size=14, merge_size=2, temporal_patch_size=2)
    tok.chat_template = QWEN_CHAT_TEMPLATE
    if has_torchvision():
        from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

        Qwen2VLProcessor(image_processor=improc, tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE,
                         video_processor=Qwen2VLVideoProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
                         ).save_pretrained(out)
    tok.save_pretrained(out)
    improc.save_pretrained(out)
    cfg = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37,
                         num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 1, 1]},
                         bos_token_id=None, eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=hidden, num_heads=4, mlp_ratio=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(cfg).eval().save_pretrained(out)
    return out


TINY_OPEN_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def build_tiny_open_clip(out_dir: str | os.PathLike[str], *, fmt: str = "safetensors", seed: int = 0) -> Path:
    """A random open_clip model in the `local-dir:` layout (open_clip_config.json + weights).

    fmt="safetensors" writes open_clip_model.safetensors; fmt="pickle" writes open_clip_pytorch_model.bin
    (a torch.save pickle), for testing that pickles are refused. The tokenizer is open_clip's real CLIP BPE.
    """
    import open_clip
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": TINY_OPEN_CLIP_CFG,
           "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                              "std": [0.26862954, 0.26130258, 0.27577711],
                              "interpolation": "bicubic", "resize_mode": "shortest"}}
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    torch.manual_seed(seed)
    model = open_clip.CLIP(**TINY_OPEN_CLIP_CFG)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(out / "open_clip_model.safetensors"))
    elif fmt == "pickle":
        torch.save(state, out / "open_clip_pytorch_model.bin")
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'pickle', not {fmt!r}")
    return out


def build_tiny_sentence_transformer(out_dir: str | os.PathLike[str], *, hidden: int = 32, layers: int = 2,
                                    seed: int = 0) -> Path:
    """A random BERT + mean pooling + normalisation, saved as a sentence-transformers directory."""
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import BertConfig, BertModel, BertTokenizer

    try:  # sentence-transformers >= 6 moved the modules; older versions have them in .models
        from sentence_transformers.sentence_transformer import modules as models
    except ImportError:
        from sentence_transformers import models  # type: ignore[no-redef,attr-defined]

    out = Path(out_dir)
    hf_dir = out.parent / (out.name + "-hf")
    hf_dir.mkdir(parents=True, exist_ok=True)
    words = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
             + ["red", "blue", "green", "dress", "shirt", "dog", "cat", "make", "it", "a", "the", "photo",
                "of", "with"])
    (hf_dir / "vocab.txt").write_text("\n".join(words) + "\n")
    tok = BertTokenizer(vocab_file=str(hf_dir / "vocab.txt"), model_max_length=64)
    tok.save_pretrained(hf_dir)
    cfg = BertConfig(vocab_size=len(words), hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=4, intermediate_size=37, max_position_embeddings=64)
    torch.manual_seed(seed)
    BertModel(cfg).eval().save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=64)
    dim = (getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension)()
    pool = models.Pooling(dim, pooling_mode="mean")
    SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu").save(str(out))
    return out


def put_in_hub_cache(src_dir: str | os.PathLike[str], cache_dir: str | os.PathLike[str], repo_id: str,
                     commit: str, *, main: bool = True) -> Path:
    """Copy a built directory into a Hugging Face hub cache as `repo_id` at `commit`.

    With HF_HUB_OFFLINE=1 and the hub cache pointed at `cache_dir`, loading `repo_id` (with
    `revision=commit`, or with no revision when `main` is True) then goes through the hub-id code path —
    revision resolution included — without a network. `commit` must be 40 hex digits, like a real one.
    """
    import re
    import shutil

    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        raise ValueError(f"commit must be 40 lowercase hex digits, not {commit!r}")
    repo = Path(cache_dir) / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    shutil.copytree(src_dir, snap, dirs_exist_ok=True)
    if main:
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snap
