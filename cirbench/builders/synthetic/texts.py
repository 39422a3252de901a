"""Words: modification-text templates (several paraphrases per edit variant), referring expressions,
refinement details for the single-target variants, and gallery captions.

Templates are plain format strings keyed "Subcategory/variant"; the variant fixes the meaning (the
predicate), the paraphrase only the wording, so every template of a key must mean the same thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cirbench.builders.synthetic.scene import Obj, Scene, choice

TEXTURE_ADJ = {"plain": "plain", "striped": "striped", "dotted": "polka-dotted", "checkered": "checkered"}
MATERIAL_ADJ = {"matte": "matte", "metallic": "metallic", "glass": "glass"}
MATERIAL_PRED = {"matte": "matte", "metallic": "metallic", "glass": "made of glass"}
ACTION_ING = {"still": "standing still", "rolling": "rolling", "falling": "falling", "spinning": "spinning"}
SIZE_ADJ = {"small": "small", "medium": "medium-sized", "large": "large"}
SLOT_AT = {
    0: "at the far left",
    1: "second from the left",
    2: "in the middle",
    3: "second from the right",
    4: "at the far right",
}
STYLE_NP = {"photo": "a photo", "cartoon": "a cartoon", "pixel art": "pixel art", "sketch": "a pencil sketch"}
STYLE_AS = {
    "photo": "as a realistic photo",
    "cartoon": "as a cartoon",
    "pixel art": "as pixel art",
    "sketch": "as a pencil sketch",
}
TIME_AT = {"day": "in daylight", "sunset": "at sunset", "night": "at night"}
TIME_NOUN = {"day": "daytime", "sunset": "sunset", "night": "night"}
WEATHER_ADJ = {"clear": "clear", "rainy": "rainy", "snowy": "snowy", "foggy": "foggy"}
WEATHER_IN = {"clear": "under a clear sky", "rainy": "in the rain", "snowy": "in the snow", "foggy": "in fog"}
WEATHER_ING = {"rainy": "raining", "snowy": "snowing", "foggy": "foggy"}
CAMERA_SEEN = {"front": "seen from the front", "top-down": "seen from above", "close-up": "as a close-up"}
CAPTION_ACTION = {"still": "resting", "rolling": "rolling", "falling": "falling", "spinning": "spinning"}
NUMBER = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}

TEMPLATES: dict[str, tuple[str, ...]] = {
    # Attribute
    "Color/exact": (
        "make the {obj} {value}",
        "change the colour of the {obj} to {value}",
        "paint the {obj} {value}",
        "the {obj} should be {value} instead",
        "recolour the {obj} {value}",
    ),
    "Color/negation": (
        "the {obj} should no longer be {cur}",
        "make the {obj} any colour but {cur}",
        "the {obj} should not be {cur} anymore",
    ),
    "Color/different": (
        "change the colour of the {obj}",
        "give the {obj} a new colour",
        "recolour the {obj}",
    ),
    "Color/group": (
        "give the {obj} a {group} colour",
        "make the {obj} a {group} colour",
        "paint the {obj} in a {group} colour",
    ),
    "Color/group-other": (
        "give the {obj} a different {group} colour",
        "make the {obj} another {group} colour",
    ),
    "Material/metallic": (
        "make the {obj} metallic",
        "turn the {obj} into metal",
        "give the {obj} a metal finish",
    ),
    "Material/glass": (
        "make the {obj} out of glass",
        "turn the {obj} into glass",
        "the {obj} should be glass",
    ),
    "Material/matte": (
        "make the {obj} matte",
        "give the {obj} a dull matte finish",
        "the {obj} should be matte instead of {cur}",
    ),
    "Material/shiny": (
        "make the {obj} shiny",
        "give the {obj} a glossy material",
        "the {obj} should be shiny",
    ),
    "Material/negation": (
        "the {obj} should no longer be {cur}",
        "change the material of the {obj}",
        "make the {obj} out of a different material",
    ),
    "Shape/exact": (
        "turn the {obj} into {value}",
        "make the {obj} {value}",
        "reshape the {obj} into {value}",
        "change the shape of the {obj} to {value}",
    ),
    "Shape/negation": (
        "the {obj} should no longer be {cur}",
        "change the shape of the {obj}",
        "give the {obj} a different shape",
    ),
    "Shape/angular": (
        "give the {obj} an angular shape with corners",
        "make the {obj} angular",
        "the {obj} should have straight edges instead of being round",
    ),
    "Texture/striped": (
        "make the {obj} striped",
        "give the {obj} a striped pattern",
        "put stripes on the {obj}",
    ),
    "Texture/dotted": (
        "make the {obj} polka-dotted",
        "cover the {obj} in polka dots",
        "give the {obj} a dotted pattern",
    ),
    "Texture/checkered": (
        "make the {obj} checkered",
        "give the {obj} a checkerboard pattern",
        "the {obj} should have a checked pattern",
    ),
    "Texture/plain": (
        "make the {obj} plain",
        "remove the pattern from the {obj}",
        "the {obj} should have no pattern at all",
    ),
    "Texture/negation": ("the {obj} should no longer be {cur}", "the {obj} should not be {cur} anymore"),
    "Texture/any": (
        "give the {obj} a pattern",
        "decorate the {obj} with a pattern",
        "the {obj} should not be plain anymore",
    ),
    "Texture/other": ("give the {obj} a different pattern", "swap the pattern of the {obj} for another one"),
    # Object
    "Addition/add": (
        "add {np}{where}",
        "put {np} into the picture{where}",
        "include {np}{where} as well",
        "there should also be {np}{where}",
    ),
    "Remove/exact": (
        "remove the {obj}",
        "take away the {obj}",
        "get rid of the {obj}",
        "delete the {obj}",
        "the {obj} should be gone",
    ),
    "Remove/one-of": (
        "remove one of the {group}",
        "take away one of the {group}",
        "get rid of one of the {group}",
    ),
    "Remove/all-but": (
        "remove everything except the {obj}",
        "keep only the {obj}",
        "take away all objects but the {obj}",
    ),
    "Replace/replace": (
        "replace the {obj} with {np}",
        "swap the {obj} for {np}",
        "put {np} where the {obj} is",
        "the {obj} should be replaced by {np}",
    ),
    "Count/one-more": (
        "add one more {shape}",
        "there should be one more {shape}",
        "add another {shape}",
        "increase the number of {shapes} by one",
    ),
    "Count/two-more": (
        "add two more {shapes}",
        "there should be two extra {shapes}",
        "increase the number of {shapes} by two",
    ),
    "Count/exactly": (
        "make it {n} {shapes_n} in total",
        "there should be exactly {n} {shapes_n}",
        "change the number of {shapes} to {n}",
    ),
    "Count/one-fewer": (
        "one fewer {shape}",
        "there should be one {shape} less",
        "reduce the number of {shapes} by one",
    ),
    "Count/double": ("double the number of {shapes}", "there should be twice as many {shapes}"),
    "Count/keep-one": (
        "keep just one {shape}",
        "there should be only a single {shape}",
        "leave only one of the {shapes}",
    ),
    # Relationship
    "Spatial/further": (
        "move the {obj} further {dir}",
        "shift the {obj} to the {dir}",
        "the {obj} should be further to the {dir}",
    ),
    "Spatial/one-step": (
        "move the {obj} one step to the {dir}",
        "nudge the {obj} one place to the {dir}",
        "shift the {obj} by one position to the {dir}",
    ),
    "Spatial/absolute": ("move the {obj} {where}", "put the {obj} {where}", "the {obj} should be {where}"),
    "Spatial/relative": (
        "put the {obj} to the {dir} of the {obj2}",
        "move the {obj} to the {dir} of the {obj2}",
        "the {obj} should be on the {dir} side of the {obj2}",
    ),
    "Spatial/next-to": (
        "move the {obj} next to the {obj2}",
        "put the {obj} beside the {obj2}",
        "the {obj} should be right next to the {obj2}",
    ),
    "Spatial/swap": (
        "swap the {obj} and the {obj2}",
        "exchange the positions of the {obj} and the {obj2}",
        "the {obj} and the {obj2} should trade places",
    ),
    "Action/rolling": ("make the {obj} roll", "the {obj} should be rolling", "set the {obj} rolling"),
    "Action/falling": ("make the {obj} fall", "the {obj} should be falling", "drop the {obj} from above"),
    "Action/spinning": ("make the {obj} spin", "the {obj} should be spinning", "set the {obj} spinning"),
    "Action/still": (
        "make the {obj} stand still",
        "the {obj} should be at rest",
        "the {obj} should stop moving",
    ),
    "Action/moving": ("set the {obj} in motion", "the {obj} should be moving", "make the {obj} move"),
    "Action/negation": ("the {obj} should no longer be {cur}", "the {obj} should not be {cur} anymore"),
    "Viewpoint/top-down": (
        "show the scene from above",
        "switch to a bird's-eye view",
        "view the scene from directly overhead",
    ),
    "Viewpoint/front": (
        "show the scene from the front",
        "switch to a front view",
        "view the scene at eye level from the front",
    ),
    "Viewpoint/zoom-out": ("zoom out", "pull the camera back to show the whole scene"),
    "Viewpoint/close-up": ("zoom in on the scene", "show a close-up of the scene", "move the camera closer"),
    "Viewpoint/different": (
        "show the scene from a different viewpoint",
        "change the camera view",
        "use another camera position",
    ),
    # Global Environment
    "Style/photo": (
        "make it look like a photo",
        "render the scene photorealistically",
        "turn the picture into a realistic photo",
    ),
    "Style/cartoon": (
        "make it a cartoon",
        "draw the scene in cartoon style with bold outlines",
        "turn the picture into a cartoon",
    ),
    "Style/pixel art": (
        "turn it into pixel art",
        "render the scene as retro pixel art",
        "make it look like an old video game",
    ),
    "Style/sketch": (
        "turn it into a pencil sketch",
        "draw the scene as a sketch",
        "make it look hand-sketched",
    ),
    "Style/negation": (
        "it should no longer look like {cur}",
        "render the scene in a different style",
        "change the art style",
    ),
    "Style/drawn": ("make it look drawn rather than photographed", "turn the photo into an illustration"),
    "Time/day": ("make it daytime", "show the scene in broad daylight", "change the time to midday"),
    "Time/sunset": ("make it sunset", "show the same scene at sunset", "change the time of day to dusk"),
    "Time/night": ("make it night", "show the scene at night", "change the time to night-time"),
    "Time/later": ("make it later in the day", "move the time of day forward", "show it at a later hour"),
    "Time/earlier": (
        "make it earlier in the day",
        "turn the clock back to an earlier hour",
        "show it at an earlier time of day",
    ),
    "Time/negation": ("it should no longer be {cur}", "change the time of day"),
    "Weather/rainy": ("make it rain", "add rain", "it should be raining"),
    "Weather/snowy": ("make it snow", "add falling snow", "cover the scene in snow"),
    "Weather/foggy": ("make it foggy", "add fog", "fill the scene with mist"),
    "Weather/clear": ("clear up the weather", "make the sky clear", "the weather should be clear"),
    "Weather/precipitation": ("add some precipitation", "make it rain or snow"),
    "Weather/bad": ("make the weather worse", "the weather should turn bad"),
    "Weather/negation": (
        "it should no longer be {cur}",
        "it should not be {cur} anymore",
        "change the weather",
    ),
}
COMPLEX_JOIN2 = ("{a} and {b}", "{a}, and also {b}", "{a}; {b}", "{a}, then {b}")
COMPLEX_JOIN3 = ("{a}, {b} and {c}", "{a}; {b}; {c}", "{a}, {b}, and then {c}")


def article(np_: str) -> str:
    return ("an " if np_[0] in "aeiou" else "a ") + np_


def plural(shape: str) -> str:
    return shape + "s"


def join_and(parts: Sequence[str]) -> str:
    parts = list(parts)
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def phrase(key: str, rng: np.random.Generator, **kw: Any) -> tuple[str, str]:
    """One paraphrase of a template family; returns (text, template id)."""
    forms = TEMPLATES[key]
    i = int(rng.integers(len(forms)))
    return forms[i].format(**kw), f"{key}/{i}"


def noun_phrase(spec: Mapping[str, str], shape: str | None = None) -> str:
    """'small red striped glass star' from whichever attributes a spec fixes."""
    words = [SIZE_ADJ[spec["size"]]] if "size" in spec else []
    words += [spec["color"]] if "color" in spec else []
    words += [TEXTURE_ADJ[spec["texture"]]] if "texture" in spec else []
    words += [MATERIAL_ADJ[spec["material"]]] if "material" in spec else []
    words += [ACTION_ING[spec["action"]]] if "action" in spec and spec["action"] != "still" else []
    words.append(shape or spec.get("shape", "object"))
    return " ".join(words)


DESCRIPTOR_SETS: tuple[tuple[str, ...], ...] = (
    ("shape",),
    ("color", "shape"),
    ("texture", "shape"),
    ("material", "shape"),
    ("size", "shape"),
    ("color", "texture", "shape"),
    ("size", "color", "shape"),
    ("color", "material", "shape"),
)


def describe(scene: Scene, slot: int, rng: np.random.Generator, edited: str | None = None) -> str:
    """The shortest unambiguous referring expression for an object of a scene ('the red circle').

    Descriptors that name the `edited` attribute are used only when nothing else is unambiguous, which
    avoids texts like "the striped square should no longer be striped"."""
    o = scene.at(slot)
    assert o is not None
    for allow_edited in (False, True):
        for n in (1, 2, 3):
            unique = [
                ds
                for ds in DESCRIPTOR_SETS
                if len(ds) == n
                and (allow_edited or edited not in ds)
                and not any(all(p.get(a) == o.get(a) for a in ds) for p in scene.objects if p is not o)
            ]
            if unique:
                ds = choice(rng, unique)
                return noun_phrase({a: o.get(a) for a in ds if a != "shape"}, o.shape)
    return f"{o.shape} {SLOT_AT[slot]}"


def pin_fragment(field: str, value: Any) -> str:
    """How a refinement states one detail ('red', 'made of glass', 'at the far left')."""
    if field == "slots":
        return SLOT_AT[int(value)]
    return {
        "color": lambda v: v,
        "size": lambda v: SIZE_ADJ[v],
        "texture": lambda v: TEXTURE_ADJ[v],
        "material": lambda v: MATERIAL_PRED[v],
        "action": lambda v: ACTION_ING[v],
        "shape": lambda v: article(v),
        "style": lambda v: STYLE_AS[v],
        "time": lambda v: TIME_AT[v],
        "weather": lambda v: WEATHER_IN[v],
        "camera": lambda v: CAMERA_SEEN[v],
    }[field](value)


def caption(scene: Scene) -> str:
    """A one-sentence description of a scene from its graph, for caption-based (text-only) baselines."""
    style = STYLE_NP[scene.style]
    setting = f"{WEATHER_ADJ[scene.weather]} {TIME_NOUN[scene.time]} scene"
    head = f"{style[0].upper()}{style[1:]} of a {setting}, {CAMERA_SEEN[scene.camera]}"
    if not scene.objects:
        return head + ", with no objects."
    parts = [f"{article(_full_np(o))} {CAPTION_ACTION[o.action]} {SLOT_AT[o.slot]}" for o in scene.objects]
    return f"{head}, showing {join_and(parts)}."


def _full_np(o: Obj) -> str:
    return f"{SIZE_ADJ[o.size]} {o.color} {TEXTURE_ADJ[o.texture]} {MATERIAL_ADJ[o.material]} {o.shape}"
