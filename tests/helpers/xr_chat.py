"""Deterministic answers to XR's prompts for the loopback chat server (tests.helpers.edit_pipelines).

Every answer is a pure function of what the request carries (the instruction, the statements, the image
bytes, the description), written here independently of cirbench's XR code, so a test can say what a run
must produce from the dataset alone: `caption_of(image bytes)`, `descriptions(instruction)`,
`rewrite_of(instruction)`, `questions_of(instruction)`, `qa_answer(image bytes, question)` and
`judge_answer(description, question)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any

from cirbench.retrieval.methods.prompts import BUILTIN
from tests.helpers.edit_pipelines import request_text

COLOURS = ("red", "blue", "green", "yellow", "black", "white", "brown")
THINGS = ("dog", "car", "chair", "tree", "boat", "cup", "bicycle", "lamp")


def request_image_bytes(body: dict[str, Any]) -> list[bytes]:
    out = []
    for m in body.get("messages", []):
        if isinstance(m.get("content"), list):
            for p in m["content"]:
                if isinstance(p, dict) and p.get("type") == "image_url":
                    out.append(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))
    return out


def _h(*parts: bytes | str) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\x00")
    return h.digest()


def caption_of(image: bytes) -> str:
    d = _h(image)
    return (f"a {COLOURS[d[0] % 7]} {THINGS[d[1] % 8]} beside a {COLOURS[d[2] % 7]} {THINGS[d[3] % 8]} "
            f"on a sunny day")


def operations_of(instruction: str) -> list[str]:
    return [f"the photo shows {instruction}", "the rest of the scene is unchanged", "there is daylight"]


def descriptions(instruction: str) -> list[str]:
    return [instruction, f"{instruction} in daylight", f"a photo in which {instruction}"]


def rewrite_of(instruction: str) -> str:
    return f"a clear picture of {instruction}"


def questions_of(instruction: str) -> list[tuple[str, bool]]:
    """(question, expected answer) per operation of `operations_of`, in order."""
    return [(f"Is it true that {s}?", i % 2 == 0) for i, s in enumerate(operations_of(instruction))]


def qa_answer(image: bytes, question: str) -> bool:
    return _h(image, question)[0] % 2 == 0


def judge_answer(description: str, question: str) -> bool:
    return _h(description, question)[0] % 3 != 0


def pairwise_answer(reference: bytes, candidate: bytes, instruction: str) -> bool:
    return _h(reference, candidate, instruction)[0] % 2 == 0


def _line(text: str, label: str) -> str:
    return str(re.findall(rf"^{label}: (.*)$", text, flags=re.M)[-1])


def kind_of(body: dict[str, Any]) -> str:
    """Which XR prompt a request carries: caption, imagine_text, ..., pairwise."""
    text = request_text(body)
    for stage in ("caption", "imagine-text", "imagine-visual", "rewrite", "questions", "verify", "judge",
                  "pairwise"):
        if text.startswith(BUILTIN[f"xr-{stage}"].text):
            return stage.replace("-", "_")
    raise ValueError(f"not an XR prompt: {text[:80]!r}")


def xr_answer(body: dict[str, Any]) -> str:
    text, images = request_text(body), request_image_bytes(body)
    kind = kind_of(body)
    yes_no = {True: "Yes.", False: "No."}
    if kind == "caption":
        return caption_of(images[0])
    if kind == "imagine_text":
        ins = _line(text, "Request")
        ops = [["Modification" if i == 0 else "Retention", s] for i, s in enumerate(operations_of(ins))]
        return "Here is my analysis.\n" + json.dumps({"operations": ops, "descriptions": descriptions(ins)})
    if kind == "imagine_visual":
        ins = _line(text, "Request")
        return json.dumps({"reference_objects": [], "additions": [ins], "deletions": [], "modifications": [],
                           "existent": [ins], "nonexistent": []})
    if kind == "rewrite":
        return rewrite_of(_line(text, "Request"))
    if kind == "questions":
        statements = re.findall(r"^\d+\. (.*)$", text, flags=re.M)
        ins = statements[0].removeprefix("the photo shows ")
        qs = [{"question": q, "answer": "yes" if a else "no"} for q, a in questions_of(ins)]
        return "```json\n" + json.dumps({"questions": qs}) + "\n```"
    if kind == "verify":
        return yes_no[qa_answer(images[0], _line(text, "Question"))]
    if kind == "judge":
        return yes_no[judge_answer(_line(text, "Description"), _line(text, "Question"))]
    ok = pairwise_answer(images[0], images[1], _line(text, "Request"))
    return f"ANSWER: {'Yes' if ok else 'No'}. The candidate {'matches' if ok else 'does not match'}."


__all__ = ["caption_of", "descriptions", "judge_answer", "kind_of", "pairwise_answer", "qa_answer",
           "questions_of", "request_image_bytes", "rewrite_of", "xr_answer"]
