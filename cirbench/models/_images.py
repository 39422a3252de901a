"""Image inputs of the two-tower adapters: the `decode` option, and copies from host to device.

decode=pil (the default): the encode loop's worker threads decode each file with PIL and run the model's
own processor (transformers image processor, open_clip preprocess); the model receives finished pixels.

decode=torchvision: the workers only read each file's bytes (cheap). The encoder decodes the whole batch
with `torchvision.io.decode_jpeg(list, device=<model device>)`, which is nvjpeg on CUDA, so decoding keeps
pace with a ViT that PIL on a few cores cannot feed, and resizes, crops and normalises there with torch ops
that follow the model's preprocessing config (a PixelSpec). JPEGs that nvjpeg rejects and other formats
(PNG, WebP, ...) are decoded on the CPU by torchvision, then by PIL (formats torchvision lacks: BMP, TIFF),
always as 3-channel RGB like `Item.load_image`. Pixels differ slightly from PIL's (another resampler, and
nvjpeg's IDCT on CUDA), so `decode` is part of the encoder's fingerprint.

torchvision 0.29 deprecates torchvision.io in favour of TorchCodec; the calls here are the ones it still
documents, and their deprecation warning is silenced where they are made.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cirbench.core.types import DatasetError, Item

if TYPE_CHECKING:
    import torch

DECODE_MODES = ("pil", "torchvision")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
_JPEG_MAGIC = b"\xff\xd8\xff"


def parse_decode(value: Any) -> str:
    mode = str(value or "pil").strip().lower()
    if mode not in DECODE_MODES:
        raise ValueError(f"unknown decode mode {value!r}; use one of {list(DECODE_MODES)} (pil: PIL and the "
                         "model's own processor; torchvision: batch JPEG decoding on the model's device)")
    return mode


def per_channel(x: Any) -> tuple[float, ...]:
    """A mean or std as three floats (configs may give one number for all channels)."""
    vals = tuple(float(v) for v in (x if isinstance(x, (list, tuple)) else (x,)))
    return vals * 3 if len(vals) == 1 else vals


@dataclass(frozen=True)
class PixelSpec:
    """The preprocessing the torchvision path reproduces with torch ops, read from the model's config."""

    resize: str
    """"shortest": shorter edge to size[0], aspect kept (torchvision Resize(int)); "exact": to `size`."""
    size: tuple[int, int]
    crop: tuple[int, int] | None
    """Centre crop (height, width) after the resize, or None."""
    crop_round: bool
    """Crop offsets rounded (torchvision CenterCrop, as open_clip) or floored (transformers)."""
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1 / 255
    """uint8 -> float factor applied before mean/std (transformers' rescale_factor)."""

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"decode=torchvision supports {list(INTERPOLATIONS)} resampling, not "
                             f"{self.interpolation!r}; use decode=pil")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def geometry(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> uint8 (3, h, w): resize (antialiased, on uint8 as the processors do), crop."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        size = [self.size[0]] if self.resize == "shortest" else list(self.size)
        img = F.resize(img, size, interpolation=InterpolationMode(self.interpolation), antialias=True)
        if self.crop is None:
            return img
        (h, w), (ch, cw) = img.shape[-2:], self.crop
        if self.crop_round or ch > h or cw > w:
            return F.center_crop(img, [ch, cw])  # pads with 0 when the image is smaller, like both processors
        return img[:, (h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, h, w) -> float32, (x - mean/scale) / (std/scale) as transformers fuses it."""
        import torch

        mean = torch.tensor(self.mean, device=batch.device).view(1, -1, 1, 1) / self.scale
        std = torch.tensor(self.std, device=batch.device).view(1, -1, 1, 1) / self.scale
        return batch.float().sub_(mean).div_(std)  # in place: one float copy of the batch, not three


@dataclass(frozen=True)
class EncodedImage:
    """An item's undecoded image bytes, read by a worker thread for decode=torchvision."""

    item: Item
    data: torch.Tensor
    """1-D uint8, on the CPU (where decode_jpeg wants its input, whatever the output device)."""
    is_jpeg: bool


def read_encoded(item: Item) -> EncodedImage:
    """The item's file (or inline) bytes; a missing or unreadable file raises DatasetError naming it."""
    import torch

    if item.image is None:
        raise DatasetError("item has no image", record=item.id, field="image")
    if isinstance(item.image, bytes):
        raw = item.image
    else:
        try:
            raw = Path(item.image).read_bytes()
        except FileNotFoundError as e:
            raise DatasetError("image file is missing", file=item.image, record=item.id, field="image") from e
        except OSError as e:
            raise DatasetError(f"image file cannot be read: {e}", file=item.image, record=item.id,
                               field="image") from e
    if not raw:
        raise DatasetError("image file is empty", file=item.image if isinstance(item.image, Path) else None,
                           record=item.id, field="image")
    return EncodedImage(item, torch.frombuffer(bytearray(raw), dtype=torch.uint8), raw[:3] == _JPEG_MAGIC)


@contextmanager
def _quiet_torchvision_io() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*decoding and encoding capabilities of TorchVision",
                                category=DeprecationWarning)
        yield


def _rgb(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W) of any depth and channel count -> uint8 (3, H, W)."""
    import torch
    from torchvision.transforms.v2 import functional as F

    if img.ndim == 4:  # an animated GIF: its first frame, as PIL shows it
        img = img[0]
    if img.dtype != torch.uint8:  # 16-bit PNG
        img = F.to_dtype(img, torch.uint8, scale=True)
    if img.shape[0] == 1:
        img = img.expand(3, -1, -1)
    return img[:3]


def _from_pil(img: Any) -> torch.Tensor:
    """A PIL image as uint8 (3, H, W) RGB on the CPU."""
    import numpy as np
    import torch

    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def _decode_slow(image: EncodedImage) -> torch.Tensor:
    """One image on the CPU: torchvision, then PIL, whose failure is the DatasetError the PIL path raises."""
    import torchvision.io as tio

    try:
        with _quiet_torchvision_io():
            return _rgb(tio.decode_image(image.data, mode=tio.ImageReadMode.RGB))
    except RuntimeError:
        return _from_pil(image.item.load_image())  # re-reads; raises DatasetError naming file, record, field


def decode(images: Sequence[EncodedImage], device: str) -> list[torch.Tensor]:
    """uint8 (3, H, W) RGB tensors on `device`: the JPEGs in one decode_jpeg call, the rest one by one."""
    import torch
    import torchvision.io as tio

    out: list[torch.Tensor | None] = [None] * len(images)
    jpegs = [i for i, im in enumerate(images) if im.is_jpeg]
    if jpegs:
        if torch.device(device).type == "cuda":
            # nvJPEG's hardware decoder does not wait for the caller's stream, and torchvision hands it
            # output memory the caching allocator may still owe to queued kernels (pytorch/vision#9606):
            # drain the stream first. Free in the encode loop, whose previous batch ended in a .cpu() sync.
            torch.cuda.current_stream(torch.device(device)).synchronize()
        rgb = tio.ImageReadMode.RGB
        with _quiet_torchvision_io():
            try:
                batch = tio.decode_jpeg([images[i].data for i in jpegs], mode=rgb, device=device)
            except RuntimeError:  # one bad file fails the call: retry one by one, to keep the others
                batch = []
                for i in jpegs:
                    try:
                        batch.append(tio.decode_jpeg(images[i].data, mode=rgb, device=device))
                    except RuntimeError:
                        batch.append(None)
        for i, img in zip(jpegs, batch):
            out[i] = None if img is None else _rgb(img)
    return [img if img is not None else _decode_slow(images[i]).to(device) for i, img in enumerate(out)]


def pixels(images: Sequence[Any], spec: PixelSpec, device: str) -> torch.Tensor:
    """Model input (N, 3, h, w) float32 on `device` from EncodedImages (or PIL images, decoded already)."""
    import torch

    encoded = [im for im in images if isinstance(im, EncodedImage)]
    decoded = iter(decode(encoded, device))
    rgb = []
    for im in images:
        if isinstance(im, EncodedImage):
            rgb.append(next(decoded))
        elif hasattr(im, "convert"):  # a PIL image: a Batch built by hand
            rgb.append(_from_pil(im).to(device))
        else:
            raise TypeError(f"decode=torchvision takes image bytes (read_image) or PIL images, not "
                            f"{type(im).__name__}")
    return spec.normalise(torch.stack([spec.geometry(x) for x in rgb]))


def to_device(x: torch.Tensor, device: str) -> torch.Tensor:
    """A CPU batch to the model's device; to CUDA from pinned memory, so the copy is an async DMA."""
    import torch

    if torch.device(device).type != "cuda" or x.device.type != "cpu":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
