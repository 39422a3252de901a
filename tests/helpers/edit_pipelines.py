"""Tiny random diffusers image-editing pipelines, saved to a directory that loads like a hub snapshot.

Tests pass the returned directory wherever a hub id goes (`editor.model` in a build config), so the build runs
the same `DiffusionPipeline.from_pretrained(dir)` call a user's `timbrooks/instruct-pix2pix` goes through.
Weights are random but seeded; each build takes about a second and a few MB. torch/diffusers are imported
inside.

Recipe (diffusers 0.42 + transformers 5.x): the text tokenizers are built in memory from a byte-level alphabet
(every string tokenizes, no merges), the T5 tokenizer from an in-memory Unigram vocabulary; every module is
constructed with tiny widths after `torch.manual_seed`.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.helpers.tiny import byte_vocab

QWEN_EDIT_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TINY_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "ip2p": {"num_inference_steps": 2, "guidance_scale": 7.5, "image_guidance_scale": 1.5},
    "flux-kontext": {"num_inference_steps": 2, "guidance_scale": 2.5, "max_sequence_length": 48},
    "qwen-image-edit": {"num_inference_steps": 2, "true_cfg_scale": 1.0, "max_sequence_length": 64},
}
"""Call arguments that keep each tiny pipeline at a fraction of a second per edit on a CPU."""


def _clip_tokenizer(max_len: int = 77) -> Any:
    from transformers import CLIPTokenizer

    vocab = byte_vocab(["<|startoftext|>", "<|endoftext|>"], end_of_word="</w>")
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_len)


def _clip_text_encoder(tok: Any, hidden: int = 32, layers: int = 2) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=37,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=hidden,
    )
    torch.manual_seed(0)
    return CLIPTextModel(cfg).eval()


def build_tiny_ip2p(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """A random StableDiffusionInstructPix2PixPipeline (tiny UNet/VAE/CLIP text encoder), ~8 MB."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )

    tok = _clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=8,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
    )
    pipe: Any = StableDiffusionInstructPix2PixPipeline(
        vae=vae,
        text_encoder=_clip_text_encoder(tok),
        tokenizer=tok,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def build_tiny_flux_kontext(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """A random FluxKontextPipeline (1+1 transformer layers, CLIP + T5 text encoders), ~0.5 MB."""
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        axes_dims_rope=[4, 4, 8],
    )
    tok = _clip_tokenizer()
    chars = [chr(c) for c in range(32, 127)]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    tok2 = T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=64)
    torch.manual_seed(seed)
    te2 = T5EncoderModel(
        T5Config(
            vocab_size=len(tok2),
            d_model=32,
            d_ff=37,
            d_kv=8,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            is_encoder_decoder=False,
        )
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4,),
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe: Any = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=_clip_text_encoder(tok),
        tokenizer=tok,
        text_encoder_2=te2,
        tokenizer_2=tok2,
        transformer=transformer,
        image_encoder=None,
        feature_extractor=None,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def build_tiny_qwen_image_edit(out_dir: str | os.PathLike[str], *, seed: int = 0) -> Path:
    """A random QwenImageEditPipeline (tiny Qwen2.5-VL text encoder + QwenImage transformer/VAE).

    Needs torchvision (its Qwen2VLProcessor does). Call `cap_qwen_edit_resolution()` before editing in a test:
    the pipeline resizes every input to a ~1024x1024 area, which costs ~20 s per call on a CPU.
    """
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )
    from tokenizers import AddedToken
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = Qwen2Tokenizer(vocab=byte_vocab(QWEN_EDIT_SPECIALS), merges=[], model_max_length=4096)
    tok.add_tokens([AddedToken(t, special=True) for t in QWEN_EDIT_SPECIALS])
    ids: dict[str, Any] = {t: tok.convert_tokens_to_ids(t) for t in QWEN_EDIT_SPECIALS}
    improc = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    processor = Qwen2VLProcessor(
        image_processor=improc,
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
    )
    torch.manual_seed(seed)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )
    torch.manual_seed(seed)
    vae = AutoencoderKLQwenImage(
        base_dim=24,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    torch.manual_seed(seed)
    cfg = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]},
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            bos_token_id=None,
        ),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=16),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    pipe: Any = QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tok,
        processor=processor,
        transformer=transformer,
    )
    out = Path(out_dir)
    pipe.save_pretrained(out)
    return out


def cap_qwen_edit_resolution(area: int = 64 * 64) -> None:
    """Test-only speed patch: cap the ~1024x1024 area QwenImageEdit(/Plus) resize every input to."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as e
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as ep

    mods: tuple[Any, ...] = (e, ep)
    for mod in mods:
        orig = getattr(mod, "_orig_calculate_dimensions", mod.calculate_dimensions)
        mod._orig_calculate_dimensions = orig
        mod.calculate_dimensions = lambda target_area, ratio, _o=orig: _o(min(target_area, area), ratio)
    ep.VAE_IMAGE_SIZE = min(ep.VAE_IMAGE_SIZE, area)
    ep.CONDITION_IMAGE_SIZE = min(ep.CONDITION_IMAGE_SIZE, area)


def write_image_folder(
    out_dir: str | os.PathLike[str], n: int = 6, *, size: int = 64, seed: int = 0, duplicates: int = 1
) -> Path:
    """A folder of n distinct smooth colour images plus `duplicates` near-copies, for source/dedup tests.

    Images are smooth gradients with a coloured disc (not noise), so perceptual hashes tell them apart and a
    re-encoded near-copy hashes close to its original. Near-copies are JPEG re-encodes of the first images.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    for i in range(n):
        c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy + 1) / 2
        arr = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)
        img = Image.fromarray(arr)
        d = ImageDraw.Draw(img)
        cx, cy, r = (
            int(v) for v in (rng.integers(8, size - 8), rng.integers(8, size - 8), rng.integers(5, 14))
        )
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        d.rectangle(
            [int(rng.integers(0, size // 2))] * 2 + [size - 1, int(rng.integers(size // 2, size))],
            outline=tuple(int(v) for v in rng.integers(0, 256, 3)),
            width=3,
        )
        img.save(out / f"img_{i:03d}.png")
    for j in range(min(duplicates, n)):
        Image.open(out / f"img_{j:03d}.png").save(out / f"img_{j:03d}_copy.jpg", quality=90)
    return out


# ------------------------------------------------------------------------------------------ a fake LMM server


@dataclass
class Reply:
    """A scripted answer of the fake server: an HTTP status, the assistant's text or a raw body, a delay."""

    status: int = 200
    content: str | None = None
    body: bytes | None = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def request_text(body: dict[str, Any]) -> str:
    """All text parts of a chat-completions request, joined (what a responder matches prompts on)."""
    out = []
    for m in body.get("messages", []):
        c = m.get("content")
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out += [p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text"]
    return "\n".join(out)


def request_images(body: dict[str, Any]) -> int:
    return sum(
        1
        for m in body.get("messages", [])
        if isinstance(m.get("content"), list)
        for p in m["content"]
        if isinstance(p, dict) and p.get("type") == "image_url"
    )


def canned_answer(body: dict[str, Any]) -> str:
    """Plausible, valid JSON answers to cirbench's default build prompts (EDIR and SoFT), by prompt marker."""
    text = request_text(body)
    if "Edit types (subcategory" in text:
        subs = re.findall(r"^- ([A-Za-z]+) \(", text, flags=re.M)
        edits = []
        for sub in subs:
            e: dict[str, Any] = {
                "subcategory": sub,
                "instruction": f"Apply a {sub.lower()} change to the main object.",
                "target_caption": f"a photo after a {sub.lower()} change",
            }
            if sub == "Complex":
                e["components"] = ["Make the main object red.", "Make it snow."]
            edits.append(e)
        return json.dumps({"source_caption": "a photo of an object", "edits": edits})
    if "meant to be the same image after this edit" in text:
        return json.dumps(
            {"edit_applied": True, "only_requested_change": True, "score": 0.9, "reason": "fine"}
        )
    if "Rewrite an image-editing instruction" in text:
        ins = re.search(r'Instruction: "(.*)"', text)
        return json.dumps({"query": "same picture but " + (ins.group(1) if ins else "changed").lower()})
    if "two-sentence description" in text:
        return json.dumps(
            {
                "sentence1": "An image that shows the requested change.",
                "sentence2": "It keeps the rest of the reference.",
            }
        )
    if "confidence_scores" in text:
        names = re.findall(r"^candidate \d+: (\S+)$", text, flags=re.M)
        return json.dumps({"confidence_scores": {n: round(1.0 - 0.05 * k, 2) for k, n in enumerate(names)}})
    if "refined_caption" in text:
        return json.dumps({"refined_caption": "the same change, and the one with the brightest colours"})
    return json.dumps({"answer": "unknown prompt"})


class FakeChatServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 (port 0), for testing clients and builds.

    Each POST /v1/chat/completions takes the next scripted `Reply` from `script` if there is one, else asks
    `responder(body)` (a str is the assistant's text; a Reply is sent as given). Bodies and headers of every
    request are kept in `requests` / `headers`. GET /v1/models lists one model.
    """

    def __init__(
        self, responder: Callable[[dict[str, Any]], str | Reply] = canned_answer, *, model: str = "fake-vlm"
    ) -> None:
        self.responder, self.model = responder, model
        self.script: list[Reply] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [{"id": server.model}]}).encode())
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(404, b'{"error": "not found"}')
                    return
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._send(400, b'{"error": "request body is not JSON"}')
                    return
                with server._lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers.items()))
                    scripted = server.script.pop(0) if server.script else None
                reply = scripted if scripted is not None else server.responder(body)
                if isinstance(reply, str):
                    reply = Reply(content=reply)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.body is not None:
                    data = reply.body
                elif reply.status == 200:
                    data = json.dumps(
                        {
                            "id": f"chatcmpl-{len(server.requests)}",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body.get("model", server.model),
                            "choices": [
                                {
                                    "index": 0,
                                    "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": reply.content or ""},
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        }
                    ).encode()
                else:
                    data = json.dumps({"error": {"message": f"scripted status {reply.status}"}}).encode()
                self._send(reply.status, data, reply.headers)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def start(self) -> FakeChatServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


__all__ = [
    "TINY_CALL_KWARGS",
    "FakeChatServer",
    "Reply",
    "build_tiny_flux_kontext",
    "build_tiny_ip2p",
    "build_tiny_qwen_image_edit",
    "canned_answer",
    "cap_qwen_edit_resolution",
    "request_images",
    "request_text",
    "write_image_folder",
]
