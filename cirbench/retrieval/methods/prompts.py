"""The prompts methods send, by id: cirbench's own wording of each method's documented structure.

A method's released prompt text is its authors' and is not copied here; a user who needs it exactly points
`--prompt-file STAGE=PATH` at the file in that method's repository. Either way the prompt's id and SHA-256
go into every artifact key and the result, so two runs with different prompts never share an artifact.

The rewrite prompts follow CIReVL's structure (methods.md §4.1): a preamble that explains the
"Image Content: / Instruction: / Edited Description:" format, then rules and examples in one of three
styles: short CIRR-style edits ("contextual"), one example per kind of change ("structural"), and the same
for garments ("structural-fashion").

`soft-constraints` follows SoFT's dual-constraint structure (methods.md §5.1): keep / add / remove lists, then
a prescriptive and a proscriptive caption, as one JSON object; `{mod_text}` marks where the modification
text goes and the reference image follows the text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cirbench.core.types import DatasetError


@dataclass(frozen=True)
class Prompt:
    """A prompt as sent: its id, the user-turn template, an optional system message, and its SHA-256."""

    id: str
    text: str
    system: str | None = None
    source: str = "cirbench"
    """'cirbench' for a built-in, else the file it was read from."""

    @property
    def sha256(self) -> str:
        blob = self.text if self.system is None else f"{self.system}\x00{self.text}"
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "source": self.source}


_PREAMBLE = (
    "You will get the description of a photo and an instruction saying how the photo should change. "
    "Write the description of the photo after the change.\n"
    "The input has two lines: 'Image Content:' describes the photo, 'Instruction:' says what to change.\n"
    "Describe only what the changed photo shows, not the change itself, and keep whatever the instruction "
    "does not touch. Answer with one line that starts with 'Edited Description:'.\n"
)

_CONTEXTUAL = _PREAMBLE + (
    "Keep it short: one plain sentence, as a person would caption the new photo.\n"
    "Examples:\n"
    "Image Content: two brown dogs running on a beach\n"
    "Instruction: show only one of them, lying in the grass\n"
    "Edited Description: a brown dog lying in the grass\n"
    "Image Content: a plate of pasta on a wooden table\n"
    "Instruction: seen from above, with a glass of red wine next to it\n"
    "Edited Description: a plate of pasta and a glass of red wine on a wooden table, seen from above\n"
    "Image Content: a red bus driving down a city street\n"
    "Instruction: make it a yellow school bus that is parked\n"
    "Edited Description: a yellow school bus parked on a city street"
)

_STRUCTURAL = _PREAMBLE + (
    "Handle each kind of change as in these examples, one per kind:\n"
    "- number: Image Content: a cat on a sofa / Instruction: has three cats / "
    "Edited Description: three cats on a sofa\n"
    "- adding: Image Content: a man reading / Instruction: also has a dog at his feet / "
    "Edited Description: a man reading with a dog at his feet\n"
    "- removing: Image Content: a kitchen with a woman cooking / Instruction: nobody is in it / "
    "Edited Description: an empty kitchen\n"
    "- replacing: Image Content: a boy holding a ball / Instruction: the ball is a kite / "
    "Edited Description: a boy holding a kite\n"
    "- comparing: Image Content: a small white boat / Instruction: the boat is bigger and darker / "
    "Edited Description: a large dark boat\n"
    "- place and background: Image Content: a horse in a field / Instruction: is on a snowy mountain / "
    "Edited Description: a horse on a snowy mountain\n"
    "- viewpoint: Image Content: a car from the side / Instruction: seen from the front at night / "
    "Edited Description: the front of a car at night"
)

_STRUCTURAL_FASHION = _PREAMBLE + (
    "The photo shows one garment. Describe the garment after the change: its type, colour, pattern, "
    "sleeves, neckline and fit.\n"
    "Examples:\n"
    "Image Content: a short black dress with long sleeves\n"
    "Instruction: is red and sleeveless and more fitted\n"
    "Edited Description: a short fitted red sleeveless dress\n"
    "Image Content: a plain grey t-shirt\n"
    "Instruction: has a graphic print and is darker\n"
    "Edited Description: a dark t-shirt with a graphic print\n"
    "Image Content: a white blouse with a round neck\n"
    "Instruction: has a v-neck and a floral pattern\n"
    "Edited Description: a white floral blouse with a v-neck"
)

_DIVERGENT_SYSTEM = "You describe images after an edit: given an instruction, describe the edited image."

_DIVERGENT = (
    "Answer in one line that starts with 'Edited Description:', as simply as you can, describing only what "
    "the edited image shows.\n"
    "Example:\n"
    "Image Content: a green apple on a table\n"
    "Instruction: cut in half\n"
    "Edited Description: a green apple cut in half on a table"
)

_ADDED_OBJECTS = (
    "You will get several short descriptions of one photo ('Image Content:') and an instruction saying how "
    "the photo should change ('Instruction:'). Name the things that the changed photo most likely shows "
    "and the original does not: the objects, people or animals the instruction brings in, with a colour or "
    "number when the instruction gives one. Answer with one short noun phrase only, no sentence and no "
    "explanation; if nothing new appears, name the main subject after the change.\n"
    "Examples:\n"
    "Image Content: a cat sleeping on a bed, a grey cat on a white blanket\n"
    "Instruction: a dog joins it and there is a lamp on\n"
    "Answer: a dog and a lit lamp\n"
    "Image Content: an empty street at night, a road with street lights\n"
    "Instruction: two red cars are driving on it\n"
    "Answer: two red cars"
)

_SOFT_CONSTRAINTS = (
    "You help a composed image retrieval system. A user shows a reference image and writes a modification "
    "text saying how the image they are looking for differs from it. Read both, sort the attributes, and "
    "write two short search captions.\n"
    "Step 1. Put attributes into three lists:\n"
    "- keep: attributes of the reference image that the wanted image still has;\n"
    "- add: attributes the wanted image must have that the reference image lacks;\n"
    "- remove: attributes the reference image has that the modification text explicitly takes away.\n"
    "Rules: an important noun stays in keep or add even when some of its attributes are removed; do not use "
    "comparative or vague words (more, less, similar, same, different, ...) and never mention 'the "
    "reference image'; list only what the image or the text clearly supports; do not derive remove from add; "
    "a list may be empty.\n"
    "Step 2. Write two captions:\n"
    "- prescriptive_query: one short caption of what the wanted image shows (keep and add), on its own, "
    "with comparisons turned into plain values using what the reference image looks like;\n"
    "- proscriptive_query: one short caption, in positive words, of the reference image as it is, centred "
    "on the remove attributes.\n"
    "Answer with this JSON object only, no explanation:\n"
    '{"attributes": {"keep": [...], "add": [...], "remove": [...]}, '
    '"queries": {"prescriptive_query": "...", "proscriptive_query": "..."}}\n'
    'Modification text: "{mod_text}"\n'
    "Reference image:"
)

_CAPTION_DETAILED = (
    "Write one complete, detailed description of this image. Mention every object you can see, its colour, "
    "its position and what it is doing. Answer with the description only."
)

# XR (methods.md §2): cirbench's own wording of each agent's documented task. The reasoning agents see text
# only (the reference's cached caption, never its image); the verifier sees one candidate image.

_XR_CAPTION = (
    "Describe this image in about three sentences so that someone could pick it out of a large collection. "
    "Name every object, its colour, size and material, where things are relative to each other, what people "
    "or animals are doing, how many there are, and the breed of any dog. Answer with the description only."
)

_XR_IMAGINE_TEXT = (
    "A user has a photo and asks for a similar photo with some changes. You get the photo's description and "
    "the user's request. Imagine the photo the user wants.\n"
    "First split the request into atomic operations. Each has a type (Addition, Removal, Modification, "
    "Comparison or Retention) and a short statement of what must be true of the wanted photo.\n"
    "Then describe the wanted photo three times: (1) only its essential content, in a few words; (2) that "
    "content with the attributes it keeps from the original photo; (3) one complete sentence.\n"
    'Reply with JSON only: {"operations": [["Type", "statement"], ...], "descriptions": ["1", "2", "3"]}.\n'
    "Example. Photo: a black cat sleeping on a grey sofa. Request: make it two cats awake on the floor.\n"
    '{"operations": [["Modification", "there are two cats"], ["Modification", "the cats are awake"], '
    '["Modification", "the cats are on the floor"]], "descriptions": ["two cats on the floor", '
    '"two black cats awake on the floor", "two black cats sitting awake on the floor of a living room"]}'
)

_XR_IMAGINE_VISUAL = (
    "A user has a photo and asks for a similar photo with some changes. You get the photo's description and "
    "the user's request. Analyse the scene of the wanted photo.\n"
    "List the objects of the original photo with their attributes and relations; split the request into "
    "additions, deletions and modifications, each bound to the attribute it changes; then say which objects "
    "exist in the wanted photo and which must not.\n"
    'Reply with JSON only: {"reference_objects": [{"name": "", "attributes": [], "relations": []}], '
    '"additions": [], "deletions": [], "modifications": [], "existent": [], "nonexistent": []}.'
)

_XR_REWRITE = (
    "Below are a user's request for a changed photo and a structured analysis of the wanted photo. Write "
    "the caption of the wanted photo in one or two plain sentences. Mention only what the wanted photo "
    "shows; do not mention the request, the original photo or the changes. Answer with the caption only."
)

_XR_QUESTIONS = (
    "Below are statements that must all be true of a photo. Turn each one into a question that can be "
    "answered with yes or no by looking at the photo, and give the answer a photo satisfying the statement "
    "would get.\n"
    'Reply with JSON only: {"questions": [{"question": "...?", "answer": "yes"}, ...]}, one per statement, '
    "in order."
)

_XR_VERIFY = "Look at the image and answer the question with Yes or No only."

_XR_JUDGE = (
    "You get the description of a photo and a yes/no question about the photo. Answer the question using "
    "only what the description says. Answer with Yes or No only."
)

_XR_PAIRWISE = (
    "The first image is the original photo, the second a candidate. A user asked for the original photo "
    "changed as follows. Does the candidate show what the user asked for? Begin your reply with "
    "'ANSWER: Yes' or 'ANSWER: No'."
)

BUILTIN: dict[str, Prompt] = {
    p.id: p
    for p in (
        Prompt("caption-detailed", _CAPTION_DETAILED),
        Prompt("caption-none", ""),
        Prompt("cirevl-contextual", _CONTEXTUAL),
        Prompt("cirevl-structural", _STRUCTURAL),
        Prompt("cirevl-structural-fashion", _STRUCTURAL_FASHION),
        Prompt("ldre-divergent", _DIVERGENT, system=_DIVERGENT_SYSTEM),
        Prompt("xr-caption", _XR_CAPTION),
        Prompt("xr-imagine-text", _XR_IMAGINE_TEXT),
        Prompt("xr-imagine-visual", _XR_IMAGINE_VISUAL),
        Prompt("xr-rewrite", _XR_REWRITE),
        Prompt("xr-questions", _XR_QUESTIONS),
        Prompt("xr-verify", _XR_VERIFY),
        Prompt("xr-judge", _XR_JUDGE),
        Prompt("xr-pairwise", _XR_PAIRWISE),
        Prompt("ti-searle", "a photo of $ that {text}"),
        Prompt("ti-pic2word", "a photo of * , {text}"),
        Prompt("cvsi-added-objects", _ADDED_OBJECTS),
        Prompt("ti-cvsi", "a photo of $ that {text}. And the photo should have {added}."),
        Prompt("soft-constraints", _SOFT_CONSTRAINTS),
    )
}
"""caption-none is the empty prompt: BLIP-2 captions the image unprompted (LDRE's dense captions).
The ti-* entries are the textual-inversion query templates (the query itself, not an instruction to a model):
SEARLE's / LinCIR's and Pic2Word's as their evaluation code builds them (methods.md §6), and CVSI's with its
added objects (methods.md §3.1), `$` and `*` being the pseudo-token's placeholder."""

# Paracosm (methods.md §1): image-edit prompts are templates with {instruction} and {shared_concept} fields
# (filled by `render`); the description prompts ask for a short content-only sentence (query side) and a
# thorough description (gallery side, the text-to-image prompt). cirbench's own wording of the structure.
_PARACOSM = (
    Prompt(
        "paracosm-edit",
        "Edit this image as the instruction says, and keep everything the instruction does not mention "
        "unchanged. Instruction: {instruction}",
    ),
    Prompt(
        "paracosm-edit-shared",
        "Edit this image as the instruction says: {instruction}. Whatever changes, the edited image must "
        "still clearly show {shared_concept}.",
    ),
    Prompt(
        "paracosm-describe-short",
        "Say in one short, plain sentence what this image shows. Name only its content: leave out style, "
        "lighting, mood and anything you are unsure of. Answer with the sentence only.",
    ),
    Prompt(
        "paracosm-describe-detailed",
        "Describe this image thoroughly and accurately. Cover every visible object with its attributes "
        "(colour, size, material, number), where each one is, what it is doing, and the background and "
        "setting. Answer with the description only.",
    ),
    Prompt(
        "paracosm-circo-text",
        "A search combines a reference photo with a requested change. Write one short sentence describing "
        "the photo being searched for: it shows {shared_concept} and satisfies the change \"{instruction}\". "
        "Answer with the sentence only.",
    ),
)
BUILTIN.update({p.id: p for p in _PARACOSM})


def render(prompt: Prompt, **fields: str) -> str:
    """A template prompt with its `{name}` fields filled in literally, in one pass (no format
    mini-language, and text from a dataset is never expanded again)."""
    import re

    return re.sub(r"\{(\w+)\}", lambda m: fields.get(m.group(1), m.group(0)), prompt.text)



def get_prompt(prompt_id: str, where: str) -> Prompt:
    from cirbench.core.options import did_you_mean

    if prompt_id not in BUILTIN:
        raise ValueError(
            f"{where}: unknown prompt {prompt_id!r}{did_you_mean(prompt_id, BUILTIN)}; "
            f"known: {', '.join(sorted(BUILTIN))} (or --prompt-file STAGE=PATH)"
        )
    return BUILTIN[prompt_id]


def prompt_from_file(path: str | Path, *, system: str | None = None) -> Prompt:
    """A prompt read from a file (e.g. a method's released prompt), recorded by its name and hash."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(
            f"cannot read the prompt file: {getattr(e, 'strerror', None) or e}", file=p
        ) from None
    if not text.strip():
        raise DatasetError("the prompt file is empty", file=p)
    return Prompt(f"file:{p.name}", text.rstrip("\n"), system=system, source=str(p))


def select(spec: str | Mapping[str, str], task_name: str, where: str) -> Prompt:
    """A prompt id, or {task family: id, ..., default: id} resolved for this task (CIReVL's per-benchmark
    prompts); the family is the task name before any ':' or '-' variant suffix."""
    if isinstance(spec, str):
        return get_prompt(spec, where)
    family = task_name.split(":")[0]
    for key in (task_name, family, family.split("-")[0], "default"):
        if key in spec:
            return get_prompt(str(spec[key]), f"{where}.{key}")
    raise ValueError(f"{where}: no prompt for task {task_name!r} and no 'default' (given: {', '.join(spec)})")


__all__ = ["BUILTIN", "Prompt", "get_prompt", "prompt_from_file", "render", "select"]
