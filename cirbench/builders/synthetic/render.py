"""Draw a Scene with PIL: a pure function of the scene graph (no per-image randomness).

How each attribute shows (a person looking at the picture should agree with the label):
- material: matte = plain colour (soft diffuse shading in photo style); metallic = light/dark reflective bands
  with a white glint; glass = see-through fill with a bright rim.
- texture: striped = diagonal stripes, dotted = polka dots, checkered = a checkerboard, plain = none.
- action: still = resting on the ground; rolling = tilted with horizontal speed lines trailing on its left;
  falling = lifted high above its shadow, tilted, with vertical speed lines above it; spinning = two curved
  arrows around it.
- camera: front = sky above a horizon, objects standing on the ground; top-down = no sky, a tiled floor
  seen from above; close-up = the front view zoomed in 1.25x (edge objects are cropped).
- style: photo = gradients and shading; cartoon = flat colours with thick black outlines; pixel art = the
  flat picture at half resolution, blocky, with a reduced palette; sketch = pale paper, pencil outlines
  and hatching.
- time: day = blue sky and sun; sunset = orange sky, low sun, orange cast; night = dark sky, moon, stars.
- weather: clear = sun/moon visible; rainy = grey clouds and rain streaks; snowy = clouds, snowflakes and a
  white ground; foggy = a whitish haze over everything.

Backgrounds, overlays and object sprites are cached: a gallery reuses few of each, so an image costs a
handful of pastes plus the PNG encoding.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from cirbench.builders.synthetic.scene import Obj, Scene

RGB = tuple[int, int, int]
BASE = 128.0
"""Geometry below is in units of a 128-pixel image and scaled to the drawing size."""

COLOR_RGB: dict[str, RGB] = {
    "red": (214, 38, 38),
    "orange": (245, 134, 24),
    "yellow": (240, 208, 32),
    "green": (38, 158, 66),
    "blue": (38, 88, 222),
    "purple": (132, 52, 184),
    "pink": (246, 122, 188),
}
RADIUS = {"small": 8.0, "medium": 10.5, "large": 12.5}
SLOT_X = (14.0, 39.0, 64.0, 89.0, 114.0)
HORIZON = 68.0
GROUND = 104.0
"""Bottom line where resting objects stand in the front view."""
TOPDOWN_Y = 66.0
FALL_LIFT = 32.0
TILT = {"still": 0.0, "rolling": -28.0, "falling": 22.0, "spinning": 0.0}
GLASS_LUT = [v * 185 // 255 for v in range(256)]
"""Glass lets about a quarter of the background through."""
ZOOM = 1.25
ZOOM_CENTRE = (64.0, 82.0)

SKY = {
    "day": ((92, 152, 228), (178, 212, 246)),
    "sunset": ((118, 78, 150), (250, 158, 78)),
    "night": ((8, 12, 38), (34, 44, 84)),
}
GROUND_RGB = {"day": (92, 158, 78), "sunset": (122, 116, 66), "night": (28, 48, 38)}
SNOW_GROUND = {"day": (236, 239, 244), "sunset": (236, 214, 196), "night": (104, 110, 138)}
PAPER = (246, 242, 230)
TINT = {"day": (0, 0, 0, 0), "sunset": (255, 110, 30, 28), "night": (8, 16, 60, 44)}


def _mix(a: RGB | tuple[float, ...], b: RGB | tuple[float, ...], t: float) -> RGB:
    return (int(a[0] + (b[0] - a[0]) * t), int(a[1] + (b[1] - a[1]) * t), int(a[2] + (b[2] - a[2]) * t))


def _style_group(style: str) -> str:
    """Pixel art is drawn flat like a cartoon (without outlines) and pixelated afterwards."""
    return {"photo": "photo", "cartoon": "cartoon", "pixel art": "flat", "sketch": "sketch"}[style]


# ----------------------------------------------------------------------------------------------- geometry


def shape_points(shape: str, r: float, cx: float, cy: float, tilt: float) -> list[tuple[float, float]]:
    """Outline of a shape of nominal radius r, rotated by tilt degrees about its centre."""
    if shape == "circle":
        pts = [(r * math.cos(t), r * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    elif shape == "square":
        h = 0.9 * r
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        R = 1.2 * r
        pts = [
            (R * math.cos(math.radians(a)), R * math.sin(math.radians(a)) + 0.2 * r) for a in (-90, 30, 150)
        ]
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = 1.18 * r if k % 2 == 0 else 0.5 * r
            a = math.radians(-90 + 36 * k)
            pts.append((rad * math.cos(a), rad * math.sin(a) + 0.08 * r))
    elif shape == "hexagon":
        pts = [
            (1.02 * r * math.cos(math.radians(a)), 1.02 * r * math.sin(math.radians(a)))
            for a in range(0, 360, 60)
        ]
    elif shape == "heart":
        s = 1.05 * r / 16.0
        pts = []
        for t in np.linspace(0, 2 * math.pi, 48, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((s * x, -s * y - 0.1 * r))
    else:
        raise ValueError(f"unknown shape {shape!r}")
    c, sn = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
    return [(cx + x * c - y * sn, cy + x * sn + y * c) for x, y in pts]


def object_centre(obj: Obj, camera: str, s: float) -> tuple[float, float]:
    """Where an object is drawn (in pixels of the drawing canvas)."""
    r = RADIUS[obj.size]
    if camera == "top-down":
        y = TOPDOWN_Y - (FALL_LIFT * 0.5 if obj.action == "falling" else 0.0)
    else:
        y = GROUND - r - (FALL_LIFT if obj.action == "falling" else 0.0)
    return SLOT_X[obj.slot] * s, y * s


# ----------------------------------------------------------------------------------------------- layers


def _reduce_rgba(img: Image.Image, k: int) -> Image.Image:
    """Box-filter an RGBA layer by k with premultiplied alpha, so transparent pixels leave no dark fringe."""
    return img if k == 1 else img.convert("RGBa").reduce(k).convert("RGBA")


@lru_cache(maxsize=256)
def background(group: str, layout: str, time: str, weather: str, size: int, ss: int) -> Image.Image:
    """The background at the output size (drawn ss times larger, then box-filtered down)."""
    return _draw_background(group, layout, time, weather, size * ss).reduce(ss)


@lru_cache(maxsize=256)
def overlay(group: str, layout: str, time: str, weather: str, size: int, ss: int) -> Image.Image:
    """The overlay at the output size; None-like (fully transparent) overlays are skipped by render."""
    return _reduce_rgba(_draw_overlay(group, layout, time, weather, size * ss), ss)


@lru_cache(maxsize=16384)
def sprite(
    shape: str,
    color: str,
    size: str,
    texture: str,
    material: str,
    tilt: float,
    group: str,
    image_size: int,
    ss: int,
) -> Image.Image:
    """An object sprite at the output size (drawn ss times larger, then box-filtered down).

    A plain box filter is right here: the colour layer covers the whole patch, so there is no fringe."""
    return _draw_sprite(shape, color, size, texture, material, tilt, group, image_size, ss).reduce(ss)


@lru_cache(maxsize=64)
def shadow(rx: int, ry: int, ss: int) -> Image.Image:
    m = Image.new("L", (2 * (rx + 1) * ss, 2 * (ry + 1) * ss), 0)
    ImageDraw.Draw(m).ellipse([ss, ss, (2 * rx + 1) * ss, (2 * ry + 1) * ss], fill=80)
    return m.reduce(ss)


def _draw_background(group: str, layout: str, time: str, weather: str, W: int) -> Image.Image:
    """Sky and ground (front layout) or a tiled floor seen from above (top-down layout)."""
    s = W / BASE
    img = Image.new("RGB", (W, W))
    arr = np.zeros((W, W, 3), np.float32)
    ys = (np.arange(W, dtype=np.float32) / s)[:, None]
    snowy = weather == "snowy"
    ground = SNOW_GROUND[time] if snowy else GROUND_RGB[time]
    if weather == "rainy":
        ground = _mix(ground, (40, 46, 58), 0.35)
    top, bottom = SKY[time]
    if weather in ("rainy", "snowy"):
        grey = _mix((140, 144, 154), (0, 0, 0), {"day": 0.0, "sunset": 0.2, "night": 0.7}[time])
        top, bottom = _mix(top, grey, 0.65), _mix(bottom, grey, 0.65)
    flat = group != "photo"
    if layout == "front":
        t = np.clip(ys / HORIZON, 0, 1)
        if flat:
            t = np.full_like(t, 0.5)
        sky = np.array(top, np.float32) * (1 - t[..., None]) + np.array(bottom, np.float32) * t[..., None]
        g = np.array(ground, np.float32)
        gt = np.clip((ys - HORIZON) / (BASE - HORIZON), 0, 1)
        shade = 1.0 if flat else (0.85 + 0.25 * gt)[..., None]
        gr = np.broadcast_to(g * shade, (W, 1, 3)) if not flat else np.broadcast_to(g, (W, 1, 3))
        arr[:] = np.where((ys < HORIZON)[..., None], sky, gr)
    else:
        arr[:] = np.array(ground, np.float32)
        if not flat:
            xs = np.arange(W, dtype=np.float32)[None, :] / s
            arr *= (0.9 + 0.1 * np.exp(-((xs - 64) ** 2 + (ys - 64) ** 2) / 3000.0))[..., None]
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    line = _mix(ground, (0, 0, 0), 0.18)
    if layout == "top-down":  # floor tiles make "seen from above" legible
        for k in range(0, 129, 16):
            d.line([(k * s, 0), (k * s, W)], fill=line, width=max(1, int(s)))
            d.line([(0, k * s), (W, k * s)], fill=line, width=max(1, int(s)))
        if weather == "rainy":
            for px, py in ((24, 20), (98, 104), (40, 108), (104, 28)):
                d.ellipse(
                    [(px - 9) * s, (py - 4) * s, (px + 9) * s, (py + 4) * s],
                    fill=_mix(ground, (90, 110, 150), 0.6),
                )
    else:
        if weather == "clear":
            if time == "day":
                d.ellipse([92 * s, 10 * s, 112 * s, 30 * s], fill=(255, 226, 70))
            elif time == "sunset":
                d.pieslice(
                    [82 * s, (HORIZON - 14) * s, 110 * s, (HORIZON + 14) * s], 180, 360, fill=(250, 96, 40)
                )
            else:
                d.ellipse([94 * s, 10 * s, 112 * s, 28 * s], fill=(236, 236, 210))
                d.ellipse([100 * s, 7 * s, 116 * s, 25 * s], fill=top)
                rng = np.random.default_rng(11)
                for x, y in rng.uniform((2, 2), (90, HORIZON - 6), size=(18, 2)):
                    d.ellipse([x * s, y * s, (x + 1.3) * s, (y + 1.3) * s], fill=(240, 240, 255))
        elif weather in ("rainy", "snowy"):
            cloud = _mix(top, (0, 0, 0), 0.25) if weather == "rainy" else _mix(top, (255, 255, 255), 0.2)
            for cx, cy, rx in ((22, 16, 18), (40, 12, 16), (78, 18, 20), (104, 12, 18), (60, 22, 14)):
                d.ellipse(
                    [(cx - rx) * s, (cy - rx * 0.55) * s, (cx + rx) * s, (cy + rx * 0.55) * s], fill=cloud
                )
        d.line([(0, HORIZON * s), (W, HORIZON * s)], fill=line, width=max(1, int(s)))
    if group == "sketch":
        img = Image.blend(img, Image.new("RGB", (W, W), PAPER), 0.6)
    return img


def _draw_overlay(group: str, layout: str, time: str, weather: str, W: int) -> Image.Image:
    """What lies in front of the objects: the time-of-day colour cast, rain, snow or fog (RGBA)."""
    s = W / BASE
    tint = TINT[time] if group != "sketch" else (*TINT[time][:3], TINT[time][3] // 2)
    img = Image.new("RGBA", (W, W), tint)
    rain = (190, 205, 235, 190) if time != "night" else (150, 165, 205, 190)
    layer = Image.new("RGBA", (W, W), (*(rain[:3] if weather == "rainy" else (255, 255, 255)), 0))
    d = ImageDraw.Draw(layer)
    rng = np.random.default_rng(7)
    if weather == "rainy":
        for x, y in rng.uniform((0, -10), (140, 128), size=(70, 2)):
            d.line([(x * s, y * s), ((x - 3) * s, (y + 10) * s)], fill=rain, width=max(1, int(s)))
    elif weather == "snowy":
        for x, y in rng.uniform((0, 0), (128, 128), size=(80, 2)):
            d.ellipse([(x - 1.3) * s, (y - 1.3) * s, (x + 1.3) * s, (y + 1.3) * s], fill=(255, 255, 255, 235))
    elif weather == "foggy":
        fog = (226, 229, 234) if time != "night" else (118, 124, 140)
        ys = np.arange(W, dtype=np.float32) / s
        a = (75 + 55 * np.exp(-((ys - HORIZON) ** 2) / 900.0)).astype(np.uint8)
        fl = np.zeros((W, W, 4), np.uint8)
        fl[..., :3] = fog
        fl[..., 3] = a[:, None]
        layer = Image.alpha_composite(layer, Image.fromarray(fl, "RGBA"))
    return Image.alpha_composite(img, layer)


@lru_cache(maxsize=64)
def _light(P: int) -> np.ndarray:
    """Diffuse shading for photo-style matte objects: light from the upper left."""
    yy, xx = np.mgrid[0:P, 0:P].astype(np.float32) / P
    d = np.sqrt((xx - 0.32) ** 2 + (yy - 0.28) ** 2)
    return np.clip(1.22 - 0.75 * d, 0.55, 1.25)


@lru_cache(maxsize=64)
def _bands(P: int) -> np.ndarray:
    """Reflective bands of a metallic surface."""
    yy, xx = np.mgrid[0:P, 0:P].astype(np.float32) / P
    return 0.45 + 0.95 * np.abs(np.sin(math.pi * (1.6 * yy + 0.7 * xx + 0.1))) ** 2


@lru_cache(maxsize=256)
def _pattern_mask(texture: str, P: int, s: float) -> Image.Image | None:
    """Where a texture's second colour goes on a P x P patch (None for plain)."""
    if texture == "plain":
        return None
    m = Image.new("L", (P, P), 0)
    d = ImageDraw.Draw(m)
    if texture == "striped":
        w = max(1, round(2.0 * s))
        for k in np.arange(-P, P, 5.0 * s):
            d.line([(k, P), (k + P, 0)], fill=255, width=w)
    elif texture == "dotted":
        dr, dstep = 1.7 * s, 6.0 * s
        for row, y in enumerate(np.arange(dstep / 2, P, dstep)):
            for x in np.arange(dstep / 4 + (dstep / 2 if row % 2 else 0), P, dstep):
                d.ellipse([x - dr, y - dr, x + dr, y + dr], fill=255)
    elif texture == "checkered":
        q = 4.0 * s
        for i, y in enumerate(np.arange(0, P, q)):
            for j, x in enumerate(np.arange(0, P, q)):
                if (i + j) % 2 == 0:
                    d.rectangle([x, y, x + q - 1, y + q - 1], fill=255)
    elif texture == "hatch":
        for k in np.arange(-P, P, 3.5 * s):
            d.line([(k, 0), (k + P, P)], fill=255, width=1)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    return m


def _pattern_rgb(color: RGB) -> RGB:
    lum = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    return _mix(color, (0, 0, 0), 0.55) if lum > 120 else _mix(color, (255, 255, 255), 0.6)


def _draw_sprite(
    shape: str,
    color: str,
    size: str,
    texture: str,
    material: str,
    tilt: float,
    group: str,
    image_size: int,
    ss: int,
) -> Image.Image:
    """An object drawn ss times larger on a transparent square patch centred on the object."""
    s1 = image_size / BASE
    P = ss * (2 * math.ceil(1.35 * RADIUS[size] * s1 + 2 * s1) + 2)
    s = s1 * ss
    r = RADIUS[size] * s
    c = P / 2
    pts = shape_points(shape, r, c, c, tilt)
    mask = Image.new("L", (P, P), 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    base = COLOR_RGB[color]
    if group == "sketch":
        base = _mix(base, (255, 255, 255), 0.12)
    col = Image.new("RGB", (P, P), base)  # flat fill; shaded surfaces below
    if material == "metallic" or group == "photo":
        flat = np.array(base, np.float32)[None, None, :]
        if material == "metallic":
            b = _bands(P) if group == "photo" else np.round(_bands(P) * 2.5) / 2.5
            silver = np.array((215, 220, 230), np.float32)
            rgb = (0.7 * flat + 0.3 * silver) * b[..., None] + np.clip(b - 1.0, 0, 1)[..., None] * 255 * 0.9
        else:
            rgb = flat * _light(P)[..., None]
        col = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(col)
    pat = _pattern_mask(texture, P, s)
    if pat is not None:
        col.paste(_pattern_rgb(base), (0, 0), pat)
    if group == "sketch":  # pencil hatching
        col.paste((90, 90, 90), (0, 0), _pattern_mask("hatch", P, s))
    alpha = mask
    if material == "glass":
        alpha = mask.point(GLASS_LUT)
    if material == "metallic":
        gx, gy, g = c - 0.3 * r, c - 0.3 * r, 0.42 * r  # a four-pointed glint
        k = 0.15 * g
        d.polygon(
            [
                (gx - g, gy),
                (gx - k, gy - k),
                (gx, gy - g),
                (gx + k, gy - k),
                (gx + g, gy),
                (gx + k, gy + k),
                (gx, gy + g),
                (gx - k, gy + k),
            ],
            fill=(255, 255, 255),
        )
    outline = {
        "cartoon": ((20, 20, 20), 2.2),
        "sketch": ((70, 70, 70), 1.0),
        "photo": (_mix(base, (0, 0, 0), 0.45), 0.8),
        "flat": (None, 0.0),
    }[group]
    da = ImageDraw.Draw(alpha)
    if material == "glass":  # a bright rim and a highlight: the tell-tale of glass
        rim = max(1, round(1.6 * s))
        d.polygon(pts, outline=(240, 248, 255), width=rim)
        da.polygon(pts, outline=235, width=rim)
        hx, hy = c - 0.35 * r, c - 0.35 * r
        d.ellipse([hx - 0.2 * r, hy - 0.2 * r, hx + 0.2 * r, hy + 0.2 * r], fill=(255, 255, 255))
        da.ellipse([hx - 0.2 * r, hy - 0.2 * r, hx + 0.2 * r, hy + 0.2 * r], fill=220)
    elif outline[0] is not None:
        w = max(1, round(outline[1] * s))
        d.polygon(pts, outline=outline[0], width=w)
        da.polygon(pts, outline=255, width=w)
    col.putalpha(alpha)
    return col


def _motion_marks(d: ImageDraw.ImageDraw, obj: Obj, cx: float, cy: float, s: float, ink: RGB) -> None:
    r = RADIUS[obj.size] * s
    w = max(1, round(1.4 * s))
    if obj.action == "rolling":
        for dy in (-0.55 * r, 0.0, 0.55 * r):
            d.line([(cx - r - 3 * s, cy + dy), (cx - r - 14 * s, cy + dy)], fill=ink, width=w)
    elif obj.action == "falling":
        for dx in (-0.55 * r, 0.0, 0.55 * r):
            d.line([(cx + dx, cy - r - 3 * s), (cx + dx, cy - r - 14 * s)], fill=ink, width=w)
    elif obj.action == "spinning":
        R = r + 4 * s
        for a0 in (200, 20):
            d.arc([cx - R, cy - R, cx + R, cy + R], a0, a0 + 110, fill=ink, width=w)
            a = math.radians(a0 + 110)
            ex, ey = cx + R * math.cos(a), cy + R * math.sin(a)
            tx, ty = -math.sin(a), math.cos(a)  # the arrow points along the direction of rotation
            nx, ny = math.cos(a), math.sin(a)
            h = 3.5 * s
            d.polygon(
                [
                    (ex + tx * h, ey + ty * h),
                    (ex - nx * h * 0.8, ey - ny * h * 0.8),
                    (ex + nx * h * 0.8, ey + ny * h * 0.8),
                ],
                fill=ink,
            )


def render(scene: Scene, size: int = 128, supersample: int = 2) -> Image.Image:
    """The picture of a scene. Cached layers are drawn `supersample` times larger and box-filtered down
    (anti-aliasing); each image is then only composed at the output size."""
    ss = supersample
    s = size / BASE
    group = _style_group(scene.style)
    layout = "top-down" if scene.camera == "top-down" else "front"
    img = background(group, layout, scene.time, scene.weather, size, ss).copy()
    for obj in scene.objects:  # shadows first, so that no shadow falls on a neighbour
        cx, cy = object_centre(obj, scene.camera, s)
        r = RADIUS[obj.size] * s
        if layout == "front":
            k = 0.6 if obj.action == "falling" else 1.0
            rx, ry = round(r * 1.05 * k), max(1, round(r * 0.3 * k))
            img.paste((0, 0, 0), (round(cx - rx - 1), round(GROUND * s - ry - 1)), shadow(rx, ry, ss))
        else:
            off = (5.0 if obj.action == "falling" else 2.5) * s
            rx = round(r)
            img.paste((0, 0, 0), (round(cx - rx - 1 + off), round(cy - rx - 1 + off)), shadow(rx, rx, ss))
    d = ImageDraw.Draw(img)
    ink: RGB = (235, 235, 240) if scene.time == "night" and group != "sketch" else (45, 45, 50)
    for obj in scene.objects:
        cx, cy = object_centre(obj, scene.camera, s)
        sp = sprite(
            obj.shape, obj.color, obj.size, obj.texture, obj.material, TILT[obj.action], group, size, ss
        )
        img.paste(sp, (round(cx - sp.width / 2), round(cy - sp.height / 2)), sp)
        _motion_marks(d, obj, cx, cy, s, ink)
    if not (scene.time == "day" and scene.weather == "clear"):
        ov = overlay(group, layout, scene.time, scene.weather, size, ss)
        img.paste(ov, (0, 0), ov)
    if scene.camera == "close-up":
        half = size / ZOOM / 2
        zx, zy = ZOOM_CENTRE[0] * s, ZOOM_CENTRE[1] * s
        zy = min(max(zy, half), size - half)
        img = img.resize(
            (size, size), Image.Resampling.BILINEAR, box=(zx - half, zy - half, zx + half, zy + half)
        )
    if scene.style == "pixel art":  # big square pixels and a reduced palette
        small = max(8, size // 2)
        img = img.resize((small, small), Image.Resampling.BOX)
        img = ImageOps.posterize(img, 3).resize((size, size), Image.Resampling.NEAREST)
    return img
