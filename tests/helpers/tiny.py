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

from cirbench.testing.conformance import demo_images  # noqa: F401  (re-exported for the tests)

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


def image_files(root: str | os.PathLike[str], seed: int = 0) -> list[Any]:
    """Items over image files of the kinds a decoder must turn into RGB, at odd sizes: RGB JPEGs (one tall
    enough that centre-crop offsets round differently in transformers and torchvision), a grayscale and a
    CMYK JPEG, an RGBA PNG, and a JPEG held inline as bytes. Content is smooth, like photos."""
    import io

    import numpy as np
    from PIL import Image

    from cirbench.core.types import Item

    out = Path(root)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def photo(w: int, h: int, mode: str = "RGB") -> Any:
        low = Image.fromarray(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8))
        return low.resize((w, h), Image.Resampling.BICUBIC).convert(mode)

    files = [("rgb-53x37.jpg", photo(53, 37)), ("rgb-41x97.jpg", photo(41, 97)),
             ("rgb-200x150.jpg", photo(200, 150)), ("gray-77x45.jpg", photo(77, 45, "L")),
             ("cmyk-60x44.jpg", photo(60, 44, "CMYK")), ("rgba-64x48.png", photo(64, 48, "RGBA"))]
    items = []
    for name, img in files:
        img.save(out / name, quality=90)  # PNG ignores quality
        items.append(Item(name.split(".")[0], image=out / name))
    buf = io.BytesIO()
    photo(90, 61).save(buf, format="JPEG", quality=90)
    return [*items, Item("inline-90x61", image=buf.getvalue())]


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


def real_clip_tokenizer(model_max_length: int = 77) -> Any:
    """The real 49,408-token OpenAI CLIP BPE, built offline from the merges file the open_clip wheel ships
    (/work/shared/offline recipe): token ids equal open_clip's and openai/clip-vit-*'s."""
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    with gzip.open(default_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")[1: 49152 - 256 - 2 + 1]
    merges = [tuple(m.split()) for m in lines]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    return CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=merges,
                         model_max_length=model_max_length)


def build_tiny_clip_realtok(out_dir: str | os.PathLike[str], *, image_size: int = 32, hidden: int = 32,
                            layers: int = 2, projection_dim: int = 16, seed: int = 0) -> Path:
    """A random transformers CLIPModel (tiny towers) with the real CLIP BPE tokenizer, so placeholder ids
    ('$' = 259, '*' = 265) are the real ones. About 7 MB (the 49,408-row token embedding)."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = real_clip_tokenizer(77)
    improc = _image_processor("CLIPImageProcessor", size={"shortest_edge": image_size},
                              crop_size={"height": image_size, "width": image_size})
    CLIPProcessor(image_processor=improc, tokenizer=tok).save_pretrained(out)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37,
                         num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id),
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


QWEN2VL_HUB_PREPROCESSOR = {
    "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor",
}
"""preprocessor_config.json as Qwen2-VL-2B-Instruct (and GME, VLM2Vec-V2.0) ship it, saved by transformers 4:
the budget as top-level `min_pixels` / `max_pixels` (added by the builder), no `size`."""


def build_tiny_gme(out_dir: str | os.PathLike[str], *, hidden: int = 32, layers: int = 2,
                   min_pixels: int = 56 * 56, max_pixels: int = 56 * 56, hub_layout: bool = True,
                   seed: int = 0) -> Path:
    """A random Qwen2-VL (the GME architecture): Qwen2VLForConditionalGeneration, tokenizer, image processor.

    14 px patches merged 2x2: a 56x56 image becomes 4 image tokens. The tokenizer and image processor are
    saved on their own as well as inside a Qwen2VLProcessor (which needs torchvision in transformers 5.x).
    With `hub_layout` (the default) preprocessor_config.json is rewritten as the real checkpoints have it
    (QWEN2VL_HUB_PREPROCESSOR: min_pixels / max_pixels at the top level, as transformers 4 saved them).
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
    if hub_layout:
        (out / "preprocessor_config.json").write_text(json.dumps(
            {"min_pixels": min_pixels, "max_pixels": max_pixels, **QWEN2VL_HUB_PREPROCESSOR}, indent=2))
        proc_cfg = out / "processor_config.json"  # transformers 5 nests the image processor here, and
        if proc_cfg.exists():  # that copy would win over preprocessor_config.json: keep the hub's one only
            cfg_d = json.loads(proc_cfg.read_text())
            cfg_d.pop("image_processor", None)
            proc_cfg.write_text(json.dumps(cfg_d, indent=2))
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


def _bert_tokenizer(extra_words: tuple[str, ...] = (), model_max_length: int = 64) -> Any:
    """A BertTokenizer over a small vocab.txt: specials, letters and their `##` continuations, a few words.

    Every lower-case ASCII word tokenizes (letter by letter at worst), so no test text turns into [UNK].
    """
    from transformers import BertTokenizer

    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    words = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + letters + ["##" + c for c in letters]
             + list(".,!?\"'-") + sorted(set(extra_words)))
    # transformers 5.x ignores `vocab_file=` here (the tokenizer keeps only the specials): pass a dict
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    return BertTokenizer(vocab=vocab, model_max_length=model_max_length)


def build_tiny_blip2(out_dir: str | os.PathLike[str], *, image_size: int = 32, hidden: int = 32,
                     layers: int = 2, num_query_tokens: int = 4, embed_dim: int = 16, seed: int = 0) -> Path:
    """A random Blip2ForImageTextRetrieval (ViT + Q-Former with its text input) + Blip2Processor.

    32 px images, 4 query tokens, 16-d projections; config.image_token_index set like the hub checkpoints'.
    """
    import torch
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _bert_tokenizer(("red", "blue", "dress", "make", "it", "a", "the", "with", "and"))
    improc = _image_processor("BlipImageProcessor", size={"height": image_size, "width": image_size})
    Blip2Processor(image_processor=improc, tokenizer=tok,
                   num_query_tokens=num_query_tokens).save_pretrained(out)
    cfg = Blip2Config(
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=hidden, intermediate_size=37,
                           num_hidden_layers=layers, num_attention_heads=4,
                           initializer_range=0.02),  # the default, 1e-10, makes every image look alike
        qformer_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37,
                            num_hidden_layers=layers, num_attention_heads=4, encoder_hidden_size=hidden,
                            max_position_embeddings=64, pad_token_id=tok.pad_token_id,
                            use_qformer_text_input=True),
        num_query_tokens=num_query_tokens, image_text_hidden_size=embed_dim,
        # the processor prepends one <image> per query token, as the hub checkpoints' processors do
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(cfg).eval()
    with torch.no_grad():
        # The constructor zeroes the query tokens and some LayerNorm weights (transformers 5.x), which makes
        # vision outputs constant and cross-attention a no-op: randomise them so that every input matters.
        model.query_tokens.normal_(0.0, 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    model.save_pretrained(out)
    return out


LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<image>"]


def _llama3_tokenizer() -> Any:
    """A byte-level BPE tokenizer with Llama-3's chat markers and `<image>`, prepending <|begin_of_text|>.

    No pad token, as in Llama-3's own tokenizer (E5-V pads with the end-of-text token).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = byte_vocab(LLAMA3_SPECIALS)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(LLAMA3_SPECIALS)
    bos = LLAMA3_SPECIALS[0]
    tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                      special_tokens=[(bos, vocab[bos])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token="<|end_of_text|>",
                                   model_max_length=4096)


def build_tiny_llava_next(out_dir: str | os.PathLike[str], *, hidden: int = 32, layers: int = 2,
                          processor_layout: str = "transformers-5", seed: int = 0) -> Path:
    """A random LlavaNextForConditionalGeneration (E5-V's architecture) + LlavaNextProcessor.

    CLIP vision tower on 28 px tiles of 14 px patches (4 patches + CLS per tile), "anyres" grid pinpoints up
    to 56x56, a 2-layer Llama; the tokenizer carries Llama-3's chat markers, so E5-V's prompts tokenize.
    processor_layout="transformers-4.41" saves the processor as E5-V's release did: preprocessor_config.json
    alone, no processor_config.json (so no patch_size / vision_feature_select_strategy).
    """
    if processor_layout not in ("transformers-5", "transformers-4.41"):
        raise ValueError("processor_layout must be transformers-5 or transformers-4.41, not "
                         f"{processor_layout!r}")
    import torch
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = _llama3_tokenizer()
    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    improc = _image_processor("LlavaNextImageProcessor", size={"shortest_edge": 28},
                              crop_size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints)
    LlavaNextProcessor(image_processor=improc, tokenizer=tok, patch_size=14,
                       vision_feature_select_strategy="default",
                       num_additional_image_tokens=1).save_pretrained(out)
    cfg = LlavaNextConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=28, patch_size=14, hidden_size=hidden,
                           intermediate_size=37, num_hidden_layers=layers, num_attention_heads=4,
                           projection_dim=hidden),
        text_config=dict(model_type="llama", vocab_size=len(tok), hidden_size=hidden, intermediate_size=37,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default", vision_feature_layer=-2,
    )
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # the newline embedding starts at zero
        model.model.image_newline.normal_(0.0, 0.5)
    model.save_pretrained(out)
    if processor_layout == "transformers-4.41":
        proc_cfg = out / "processor_config.json"
        nested = json.loads(proc_cfg.read_text())["image_processor"]
        nested["image_processor_type"] = "LlavaNextImageProcessor"
        nested["processor_class"] = "LlavaNextProcessor"
        (out / "preprocessor_config.json").write_text(json.dumps(nested, indent=2))
        proc_cfg.unlink()
    return out


VLM2VEC_LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "k_proj", "q_proj", "out_proj",
                        "v_proj", "gate_proj", "up_proj"]
"""VLM2Vec's src/arguments.py default lora_target_modules (on Qwen2-VL they match the language model only)."""


def qwen2vl_v4_adapter_key(key: str) -> str:
    """A peft tensor name on transformers 5's Qwen2-VL as transformers 4 (VLM2Vec's training class) has it."""
    key = key.replace("base_model.model.model.language_model.", "base_model.model.model.", 1)
    return key.replace("base_model.model.model.visual.", "base_model.model.visual.", 1)


def build_tiny_qwen2vl_lora(out_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str], *,
                            use_dora: bool = True, rank: int = 4, layout: str = "transformers-4",
                            seed: int = 0) -> Path:
    """A random peft (Do)LoRA adapter on a tiny Qwen2-VL (VLM2Vec-V2.0's release format); needs `peft`.

    The adapter directory holds adapter_config.json (base_model_name_or_path = `base_dir`),
    adapter_model.safetensors and, like the hub repo, the tokenizer and image processor. Every adapter
    tensor is random (lora_B and the DoRA magnitudes too), so each one changes the merged model. With
    layout="transformers-4" (the default) tensor names are those VLM2Vec's transformers-4 class saved
    (`base_model.model.model.layers...`); "transformers-5" keeps this transformers' names.
    """
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2VLForConditionalGeneration

    if layout not in ("transformers-4", "transformers-5"):
        raise ValueError(f"layout must be transformers-4 or transformers-5, not {layout!r}")
    out = Path(out_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(base_dir)
    cfg = LoraConfig(r=rank, lora_alpha=4 * rank, lora_dropout=0.0, use_dora=use_dora,
                     target_modules=VLM2VEC_LORA_TARGETS, init_lora_weights="gaussian")
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():  # lora_B starts at zero and the magnitude at |W|: make every tensor matter
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
            elif "lora_magnitude_vector" in name:
                p.mul_(torch.empty_like(p).uniform_(0.5, 1.5))
    peft_model.save_pretrained(str(out))
    if layout == "transformers-4":
        weights = out / "adapter_model.safetensors"
        state = load_file(str(weights))
        save_file({qwen2vl_v4_adapter_key(k): v.contiguous() for k, v in state.items()}, str(weights))
    for f in Path(base_dir).iterdir():
        if f.is_file() and not f.name.startswith(("model", "config", "generation")):
            shutil.copy(f, out / f.name)
    return out


def build_tiny_mml_clip(out_dir: str | os.PathLike[str], clip_dir: str | os.PathLike[str], *,
                        output_dim: int = 16, fourier: int = 8, hidden: int = 24, scales: int = 3,
                        sigmas: tuple[float, ...] = (2.0**0, 2.0**4, 2.0**8), seed: int = 0) -> Path:
    """`weights_best.pth` as mml-codebase's train.py saves it (`torch.save(MmlCLIP.state_dict())`), around
    the CLIPModel in `clip_dir` (e.g. build_tiny_clip's): the frozen backbone twice (`image_encoder.
    clip_model.*`, `text_encoder.clip_model.*`), the three projection heads, the GeoCLIP location encoder
    (`location_encoder.LocEnc{i}.capsule.{0.b,1,3,5}`, `.head`) and `logit_scale`. The names are those of
    mmlandmarks/models/{mml_clip,location_encoder}.py; the widths are tiny (the released ones are 512
    Fourier features, 1024 hidden, 512 out)."""
    import torch
    from transformers import CLIPModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clip = CLIPModel.from_pretrained(clip_dir)
    state: dict[str, Any] = {}
    for tower in ("image_encoder", "text_encoder"):
        for k, v in clip.state_dict().items():
            state[f"{tower}.clip_model.{k}"] = v.clone()
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.3) -> Any:
        return torch.randn(*shape, generator=g) * scale

    dim = int(clip.config.projection_dim or 0)
    for head in ("ground", "satellite", "text"):
        state[f"{head}_projector.0.weight"] = rand(output_dim, dim)
        state[f"{head}_projector.0.bias"] = rand(output_dim, scale=0.1)
        state[f"{head}_projector.2.weight"] = rand(output_dim, output_dim)
        state[f"{head}_projector.2.bias"] = rand(output_dim, scale=0.1)
    for i in range(scales):
        p = f"location_encoder.LocEnc{i}"
        state[f"{p}.capsule.0.b"] = torch.randn(fourier, 2, generator=g) * sigmas[i % len(sigmas)]
        widths = [2 * fourier, hidden, hidden, hidden]
        for j, layer in enumerate((1, 3, 5)):
            state[f"{p}.capsule.{layer}.weight"] = rand(widths[j + 1], widths[j])
            state[f"{p}.capsule.{layer}.bias"] = rand(widths[j + 1], scale=0.1)
        state[f"{p}.head.weight"] = rand(output_dim, hidden)
        state[f"{p}.head.bias"] = rand(output_dim, scale=0.1)
    state["logit_scale"] = torch.tensor(2.6592)
    torch.save(state, out / "weights_best.pth")
    return out


def build_tiny_qwen25vl(out_dir: str | os.PathLike[str], qwen2vl_dir: str | os.PathLike[str], *,
                        seed: int = 0) -> Path:
    """A random Qwen2_5_VLForConditionalGeneration with the tokenizer and image processor of a tiny Qwen2-VL
    (build_tiny_gme's): the Qwen2.5-VL backbone ReCALL's paper uses, at the same tiny sizes."""
    import shutil

    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    src, out = Path(qwen2vl_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith(("model", "config", "generation")):
            shutil.copy(f, out / f.name)
    c = json.loads((src / "config.json").read_text())
    tc = c["text_config"]
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=tc["vocab_size"], hidden_size=32, intermediate_size=37,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                          "mrope_section": [2, 1, 1]},
                         bos_token_id=None, eos_token_id=tc.get("eos_token_id"),
                         pad_token_id=tc.get("pad_token_id")),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=32, intermediate_size=37, num_heads=4,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[1]),
        image_token_id=c["image_token_id"], video_token_id=c["video_token_id"],
        vision_start_token_id=c["vision_start_token_id"], vision_end_token_id=c["vision_end_token_id"])
    torch.manual_seed(seed)
    Qwen2_5_VLForConditionalGeneration(cfg).eval().save_pretrained(out)
    return out


def build_tiny_blip2_opt(out_dir: str | os.PathLike[str], *, image_size: int = 32, hidden: int = 32,
                         layers: int = 2, num_query_tokens: int = 4, seed: int = 0) -> Path:
    """A random Blip2ForConditionalGeneration over a tiny OPT decoder (LDRE's and CVSI's captioner family:
    BLIP-2 OPT) + Blip2Processor whose GPT-2-style byte-level tokenizer has an `<image>` token."""
    import torch
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, GPT2TokenizerFast

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "</s>", "<unk>", "<image>"]
    vocab = byte_vocab(specials)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = GPT2TokenizerFast(tokenizer_object=core, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>", model_max_length=512)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    improc = _image_processor("BlipImageProcessor", size={"height": image_size, "width": image_size})
    proc = Blip2Processor(image_processor=improc, tokenizer=tok, num_query_tokens=num_query_tokens)
    proc.save_pretrained(out)
    cfg = Blip2Config(
        vision_config=dict(image_size=image_size, patch_size=8, hidden_size=hidden, intermediate_size=37,
                           num_hidden_layers=layers, num_attention_heads=4, initializer_range=0.02),
        qformer_config=dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37,
                            num_hidden_layers=layers, num_attention_heads=4, encoder_hidden_size=hidden,
                            max_position_embeddings=64),
        text_config=dict(model_type="opt", vocab_size=len(tok), hidden_size=hidden, ffn_dim=37,
                         num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=512,
                         word_embed_proj_dim=hidden, pad_token_id=tok.pad_token_id,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        num_query_tokens=num_query_tokens, image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # as in build_tiny_blip2: zeroed query tokens make every image look alike
        model.query_tokens.normal_(0.0, 0.5)
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1.0, 0.1)
                m.bias.normal_(0.0, 0.1)
    model.save_pretrained(out)
    return out


def build_tiny_phi(path: str | os.PathLike[str], *, in_dim: int = 16, out_dim: int = 32, seed: int = 0,
                   key: str = "Phi") -> Path:
    """A random SEARLE / LinCIR Phi (Linear(d, 4d) -> GELU -> Dropout -> Linear(4d, 4d) -> GELU -> Dropout ->
    Linear(4d, w)) saved as released: torch.save({'Phi': state_dict}) with keys layers.{0,3,6}.*"""
    import torch

    g = torch.Generator().manual_seed(seed)
    hidden = 4 * in_dim

    def lin(o: int, i: int) -> tuple[Any, Any]:
        return torch.randn(o, i, generator=g) * 0.3, torch.randn(o, generator=g) * 0.1

    state: dict[str, Any] = {}
    for idx, (o, i) in zip((0, 3, 6), ((hidden, in_dim), (hidden, hidden), (out_dim, hidden)), strict=True):
        state[f"layers.{idx}.weight"], state[f"layers.{idx}.bias"] = lin(o, i)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: state, "epoch": 20}, out)
    return out


def build_tiny_pic2word(path: str | os.PathLike[str], *, in_dim: int = 16, middle: int = 8, out_dim: int = 32,
                        seed: int = 0) -> Path:
    """A random Pic2Word IM2TEXT saved as released: {'state_dict_img2text': {'module.layers.0.0.weight',
    ..., 'module.fc_out.bias'}, 'state_dict': {...}} (the CLIP's own state dict beside it)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    for i, d in enumerate((in_dim, middle)):
        state[f"module.layers.{i}.0.weight"] = torch.randn(middle, d, generator=g) * 0.3
        state[f"module.layers.{i}.0.bias"] = torch.randn(middle, generator=g) * 0.1
    state["module.fc_out.weight"] = torch.randn(out_dim, middle, generator=g) * 0.3
    state["module.fc_out.bias"] = torch.randn(out_dim, generator=g) * 0.1
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict_img2text": state, "state_dict": {"module.logit_scale": torch.tensor(4.6)},
                "epoch": 30}, out)
    return out
