"""Conformance checks for plugin authors, as scikit-learn's `check_estimator`: does a task keep the contract?

    from cirbench.testing.conformance import check_task
    check_task("my-benchmark", "path/to/a/small/copy/of/its/files")

`check_task` loads the task from a data directory in the benchmark's own format, then checks what every
cirbench surface relies on: the spec names its splits, protocols and metrics consistently; each protocol
validates (its metrics are the ones the spec advertises, its main metric is one of them, K is deep enough,
its scorer is registered, its record is JSON); a misspelt `--task-option` is refused; the real eval flow
(the `random` baseline) writes a result.json that passes the schema and holds every advertised metric in
every group of every breakdown the protocol declares; the data card renders with the metrics. A failure
raises `ConformanceError` naming the task, the protocol and what is wrong. cirbench's own suite runs it
over every registered task (tests/test_conformance.py).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cirbench.core.metrics import parse_metric
from cirbench.core.options import UnknownOptionError
from cirbench.core.protocol import scorer_from_record
from cirbench.core.result import OVERALL, Result
from cirbench.core.types import DatasetError, Task
from cirbench.tasks.registry import TaskSpec, check_spec, get_task, get_task_spec

__all__ = ["ConformanceError", "check_protocol", "check_task"]

MISSPELT = "no_such_option_for_conformance"


class ConformanceError(AssertionError):
    """A task breaks the contract cirbench's surfaces rely on."""


def _fail(where: str, what: str) -> ConformanceError:
    return ConformanceError(f"{where}: {what}")


def check_protocol(spec: TaskSpec, task: Task, protocol: str) -> None:
    """The loaded protocol agrees with the spec and can be scored and recorded."""
    where = f"task {spec.name!r}, protocol {protocol!r}"
    p = task.protocol
    if p.name != protocol:
        raise _fail(where, f"the loader returned protocol {p.name!r}")
    advertised = spec.metrics_for(protocol)
    if tuple(p.metrics) != advertised:
        raise _fail(where, f"metrics {list(p.metrics)} differ from the advertised {list(advertised)}")
    if p.main_metric not in p.metrics:
        raise _fail(where, f"main metric {p.main_metric!r} is not among its metrics")
    for m in p.metrics:
        k = parse_metric(m).k
        if k is not None and parse_metric(m).kind != "recall_subset" and k > p.top_k:
            raise _fail(where, f"{m} needs a run of depth {k} but top_k is {p.top_k}")
    if OVERALL in p.breakdowns:
        raise _fail(where, f"{OVERALL!r} is the headline, not a breakdown kind")
    record = p.to_dict()
    try:
        json.dumps(record, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _fail(where, f"the protocol record is not JSON: {e}") from None
    try:
        scorer_from_record(record["scorer"])
    except ValueError as e:
        raise _fail(where, str(e)) from None
    if any(not isinstance(v, str) for v in p.notes.values()):
        raise _fail(where, "notes are documentation: every value must be text")


def _check_options(spec: TaskSpec, data_dir: Path, split: str) -> None:
    where = f"task {spec.name!r}"
    for name, help_text in spec.options.items():
        if not help_text.strip():
            raise _fail(where, f"option {name!r} has no help text")
    try:
        bad: dict[str, Any] = {MISSPELT: "1"}
        get_task(spec.name, split, data_dir=data_dir, **bad)
    except UnknownOptionError as e:
        if MISSPELT not in str(e):
            raise _fail(where, f"the refusal of a misspelt option does not name it: {e}") from None
    else:
        raise _fail(where, f"a misspelt --task-option {MISSPELT}=1 was accepted")


def _check_result(spec: TaskSpec, task: Task, protocol: str, out: Path) -> Result:
    where = f"task {spec.name!r}, protocol {protocol!r}"
    result = Result.read(out)  # schema-checked on reading
    advertised = list(spec.metrics_for(protocol))
    if result.protocol.get("metrics") != advertised:
        raise _fail(where, f"result.json records metrics {result.protocol.get('metrics')}")
    if result.main_metric not in advertised:
        raise _fail(where, f"main metric {result.main_metric!r} is not advertised")
    if not task.has_labels:
        if result.overall:
            raise _fail(where, "an unlabelled split has scores")
        return result
    if list(result.overall) != advertised:
        raise _fail(where, f"overall scores {list(result.overall)} are not the advertised {advertised}")
    declared = set(task.protocol.breakdowns)
    for kind, groups in result.scores.items():
        if kind != OVERALL and kind not in declared:
            raise _fail(where, f"scores for breakdown {kind!r}, which the protocol does not declare")
        for group, scores in groups.items():
            if list(scores) != advertised:
                raise _fail(where, f"{kind} {group!r} has metrics {list(scores)}, not {advertised}")
    result.read_run()  # the run file is the one the result was computed from
    return result


def _check_card(spec: TaskSpec, split: str, task: Task) -> None:
    from cirbench.cards import render_card

    text = render_card(spec.family or spec.name, [(spec, {split: task})])
    if f"`{spec.name}`" not in text or ", ".join(spec.metrics) not in text:
        raise _fail(f"task {spec.name!r}", "its data card does not show its name and metrics")


def check_task(task: str | TaskSpec, data_dir: str | os.PathLike[str], *, split: str | None = None,
               protocols: Sequence[str] | None = None, model: str = "random",
               n_bootstrap: int = 20) -> list[Result]:
    """Check a registered task against the contract on the files in `data_dir`; the results, per protocol.

    `split` defaults to the spec's default split, `protocols` to all of the spec's. Every eval runs in a
    temporary folder with the embedding cache off, so nothing is left behind.
    """
    from cirbench.evaluation import EvalOptions, evaluate

    spec = task if isinstance(task, TaskSpec) else get_task_spec(task)
    try:
        check_spec(spec)
    except ValueError as e:
        raise ConformanceError(str(e)) from None
    root = Path(data_dir)
    split = split or spec.default_split
    chosen = list(protocols or spec.protocols)
    unknown = [p for p in chosen if p not in spec.protocols]
    if unknown:
        raise ValueError(f"task {spec.name!r} has no protocol {unknown[0]!r}; "
                         f"protocols: {list(spec.protocols)}")
    _check_options(spec, root, split)
    results = []
    loaded: Task | None = None
    with tempfile.TemporaryDirectory(prefix="cirbench-conformance-") as tmp:
        for protocol in chosen:
            loaded_p = get_task(spec.name, split, data_dir=root, protocol=protocol)
            check_protocol(spec, loaded_p, protocol)
            out = Path(tmp) / protocol
            evaluate(model, spec.name, split=split, data_dir=root, protocol=protocol, output=out,
                     options=EvalOptions(progress=False, n_bootstrap=n_bootstrap, use_cache=False))
            results.append(_check_result(spec, loaded_p, protocol, out))
            if protocol == spec.protocols[0]:
                loaded = loaded_p
    _check_card(spec, split, loaded if loaded is not None else get_task(spec.name, split, data_dir=root))
    return results


# ------------------------------------------------------------------------------------------------------
# Encoders
# ------------------------------------------------------------------------------------------------------

MODALITIES = ("image", "text", "image+text", "gps")


def demo_images(n: int = 3, size: int | tuple[int, int] = 48, seed: int = 0) -> list[Any]:
    """Random RGB PIL images (different from each other), for feeding encoders in tests."""
    import numpy as np
    from PIL import Image

    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def _demo_items(n: int = 3) -> dict[str, list[Any]]:
    import io

    from cirbench.core.types import Item
    def png(img: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    images = [png(img) for img in demo_images(n, size=(40, 30))]
    texts = ["a red dress with long sleeves", "make it blue", "a dog on the beach"][:n]
    from cirbench.core.geo import gps_text

    points = [(48.8584, 2.2945), (40.6892, -74.0445), (-33.8568, 151.2153)][:n]
    captions = ["a photo of a tower", "a statue on an island", "an opera house by the sea"][:n]
    return {"image": [Item(f"img{i}", image=b, caption=c) for i, (b, c) in enumerate(zip(images, captions))],
            "gps": [Item(f"gps{i}", text=gps_text(*p)) for i, p in enumerate(points)],
            "text": [Item(f"txt{i}", text=t) for i, t in enumerate(texts)],
            "image+text": [Item(f"both{i}", image=b, text=t) for i, (b, t) in enumerate(zip(images, texts))]}


def check_encoder(name: str, *, vector_options: Sequence[dict[str, Any]] = (), atol: float = 1e-4,
                  roles: Mapping[str, Sequence[str]] | None = None, **options: Any) -> None:
    """Check the Encoder that `get_model(name, **options)` builds against what the eval flow relies on.

    Through the real encode loop, for every modality the spec declares and both roles: one finite row per item
    of the declared width (a unit row unless the encoder declares `unit_vectors = False`); the same vectors
    twice and whatever the batch size (no item's vector depends on its batch neighbours); a JSON fingerprint
    that is stable. A modality it does not declare is refused before encoding. Each dict of `vector_options`
    must change the fingerprint (it changes the vectors, so it must change the cache key). A registered alias
    or family must declare its options (`register_model` / `register_family`'s table): every option given here
    and in `vector_options` is declared, each declared default parses, and a misspelt option is refused with a
    suggestion before the family's code runs. `roles` (role -> modalities) is for a model whose sides take
    different inputs (HUG: composed queries, image gallery): a declared modality a role does not take must be
    refused with a DatasetError naming the record. Raises `ConformanceError`.
    """
    import numpy as np

    from cirbench.models.base import check_modalities
    from cirbench.models.registry import get_model

    where = f"model {name!r}"
    _check_declaration(name, where, [options, *vector_options])
    from cirbench.retrieval.encode import encode_items, unit_vectors

    enc = get_model(name, **options)
    spec, unit = enc.spec, unit_vectors(enc)
    if not spec.name or not set(spec.modalities) <= set(MODALITIES) or not spec.modalities:
        raise _fail(where, f"spec names modalities {spec.modalities!r}; each must be one of {MODALITIES}")
    fp = enc.fingerprint()
    try:
        key = json.dumps(fp, sort_keys=True)
    except TypeError as e:
        raise _fail(where, f"its fingerprint is not JSON ({e}): it cannot key the cache") from None
    if json.dumps(enc.fingerprint(), sort_keys=True) != key:
        raise _fail(where, "its fingerprint changes between two calls")
    items = _demo_items()
    for modality in MODALITIES:
        if modality not in spec.modalities:
            try:
                check_modalities(spec, {"query": modality})
            except ValueError:
                continue
            raise _fail(where, f"{modality!r} items are not refused although the spec does not declare them")
        for role in ("query", "document"):
            if roles is not None and modality not in roles.get(role, ()):
                try:
                    encode_items(enc, items[modality], role=role, batch_size=len(items[modality]), workers=0,
                                 progress=False)
                except DatasetError as e:
                    if e.record is None:
                        raise _fail(where, f"{modality} items as {role}: refused without naming the "
                                           "record") from None
                    continue
                raise _fail(where, f"{modality} items as {role} are not refused although `roles` says "
                                   f"{role} takes {list(roles.get(role, ()))}")
            batch, _ = encode_items(enc, items[modality], role=role, batch_size=len(items[modality]),
                                    workers=0, progress=False)
            single, _ = encode_items(enc, items[modality], role=role, batch_size=1, workers=0,
                                     progress=False)
            again, _ = encode_items(enc, items[modality], role=role, batch_size=len(items[modality]),
                                    workers=0, progress=False)
            what = f"{modality} items as {role}"
            if batch.shape[0] != len(items[modality]) or (spec.dim and batch.shape[1] != spec.dim):
                raise _fail(where, f"{what}: vectors of shape {batch.shape}, spec dim {spec.dim}")
            if not np.isfinite(batch).all():
                raise _fail(where, f"{what}: vectors are not finite")
            if unit and not np.allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-4):
                raise _fail(where, f"{what}: vectors are not unit rows (and the encoder does not declare "
                                   "unit_vectors = False)")
            if not np.allclose(batch, again, atol=atol):
                raise _fail(where, f"{what}: two encodes of the same items differ")
            if not np.allclose(batch, single, atol=atol):
                gap = float(np.abs(batch - single).max())
                raise _fail(where, f"{what}: a vector depends on its batch (max difference {gap:.2e})")
    for variant in vector_options:
        other = get_model(name, **{**options, **variant}).fingerprint()
        if json.dumps(other, sort_keys=True) == key:
            raise _fail(where, f"option {variant} does not change the fingerprint (the cache key)")


def _check_declaration(name: str, where: str, used: Sequence[dict[str, Any]]) -> None:
    """The option table of an alias or family: declared, well-formed, and enforced by the registry."""
    from cirbench.core.options import Option
    from cirbench.models.registry import get_model, model_options

    table = model_options(name)
    if table is None:
        return  # a plugin's own factory: its signature is what it accepts
    names = [o.name for o in table]
    if not all(isinstance(o, Option) for o in table) or len(set(names)) != len(names):
        raise _fail(where, f"its option table must hold Options with distinct names, not {names}")
    for option in table:
        if not option.help:
            raise _fail(where, f"option {option.name!r} has no help text (`cirbench models` shows it)")
        try:
            option.parse(option.default)
        except ValueError as e:
            raise _fail(where, f"option {option.name!r}: its declared default does not parse ({e})") from None
    for given in used:
        undeclared = sorted(set(given) - set(names) - {"allow_plugins"})
        if undeclared:
            raise _fail(where, f"options {undeclared} are used but not declared (declared: {names})")
    misspelt = names[0] + "x" if names else MISSPELT
    try:
        get_model(name, **dict[str, Any]({misspelt: "1"}))
    except UnknownOptionError as e:
        if names and "did you mean" not in str(e):
            raise _fail(where, f"the misspelt option {misspelt!r} is refused without a suggestion") from None
    else:
        raise _fail(where, f"the misspelt option {misspelt!r} was accepted")


__all__ += ["check_encoder"]
