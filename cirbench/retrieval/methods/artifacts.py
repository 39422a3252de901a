"""Per-item text artifacts of a method (captions, rewrites, constraints), cached like embeddings.

An artifact is served only for the exact input that made it. Its key is the SHA-256 of the component's
fingerprint, the prompt's SHA-256, the decoding parameters, the item's own seed and the item's content key;
the seed is derived from the item id and a base seed (`item_seed`), so splitting the items into shards, or
generating them in another order, never changes an output.

On disk a store is one folder per `ArtifactSpec` (its `namespace`): `spec.json` plus JSONL parts. Every
generation session appends to a part of its own, one line per finished item, flushed and fsynced before the
next batch starts; a process killed mid-line leaves a truncated last line, which is not JSON and is skipped
on read. So a rerun loses nothing that had finished and generates nothing twice. Shards write their own
parts in the same folder (or in copies of it, joined later with `merge_stores`); `compact` rewrites all
parts as one, atomically.

Released intermediates (LDRE's CIRCO GPT-3.5 edits, CIReVL-style modification files) come in through
`ImportedArtifacts`: a read-only JSON `{item_id: value}` recorded with its path, SHA-256 and the provenance
the user declares. With a retired LLM this is the only way to reproduce a published number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cirbench.core.io import atomic_write, write_json
from cirbench.core.paths import Root
from cirbench.core.progress import progress_bar
from cirbench.core.types import DatasetError
from cirbench.engine.base import DEFAULT_NEEDS, Engine, LocalEngine, Needs

log = logging.getLogger("cirbench.retrieval.methods.artifacts")

ARTIFACT_FORMAT = 1
Value = Any
"""A JSON value: a text (a caption, a rewrite), a list of texts (LDRE's 15 captions) or an object."""


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sha256_text(text: str) -> str:
    """The SHA-256 of a prompt template, as recorded in every artifact key and result."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def item_seed(base_seed: int, stage: str, item_id: str) -> int:
    """The seed of one item of one stage: a hash of (base seed, stage, id), the same in any shard or order."""
    digest = hashlib.sha256(_canonical(["cirbench-item-seed", int(base_seed), stage, item_id])).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: fits torch / numpy / OpenAI `seed`


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0-based): the items whose id hashes to `index` modulo `count`."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= index < count")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """'i/n' as a user types it (`--shard 0/4`)."""
        try:
            i, n = (int(p) for p in text.split("/"))
        except ValueError:
            raise ValueError(f"shard {text!r} is not 'index/count', e.g. '0/4'") from None
        return cls(i, n)

    def owns(self, item_id: str) -> bool:
        if self.count == 1:
            return True
        h = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:8], "big")
        return h % self.count == self.index


@dataclass(frozen=True)
class ArtifactSpec:
    """Everything, besides the item, that changes one stage's artifacts."""

    stage: str
    """What the artifact is, e.g. 'ref_caption' or 'edited_caption' (also part of the seed)."""
    component: Mapping[str, Any]
    """The producing component's fingerprint (LMM backend, model id, snapshot, revision)."""
    prompt_sha256: str
    decoding: Mapping[str, Any] = field(default_factory=dict)
    """temperature, top_p, max_tokens, n, ... exactly as sent."""
    base_seed: int = 0

    def record(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "component": dict(self.component),
            "prompt_sha256": self.prompt_sha256,
            "decoding": dict(self.decoding),
            "base_seed": int(self.base_seed),
        }

    @property
    def namespace(self) -> str:
        return hashlib.sha256(_canonical(self.record())).hexdigest()

    def seed(self, item_id: str) -> int:
        return item_seed(self.base_seed, self.stage, item_id)

    def key(self, item_id: str, content_key: str) -> str:
        """The artifact key of one item: component, prompt, decoding, the item's seed and its content."""
        r = self.record()
        del r["base_seed"]  # enters through the per-item seed
        return hashlib.sha256(_canonical([r, self.seed(item_id), content_key])).hexdigest()


@dataclass(frozen=True)
class ArtifactJob:
    """One item to generate: its id, its content key and the seed its component must use."""

    id: str
    content_key: str
    seed: int


Generate = Callable[[Sequence[ArtifactJob]], Sequence[Value]]
"""Makes the artifacts of a batch of jobs, in order (it may raise: finished batches are kept)."""

Usage = Mapping[str, float]
"""What a batch cost where it ran (seconds, model calls, tokens), for the driver's cost report."""


def _no_account(jobs: Sequence[ArtifactJob], usage: Usage) -> None:
    pass


@dataclass(frozen=True)
class StageWork:
    """A stage's generation in two halves, so that an engine can run it in other processes.

    `worker()` runs once in each worker (it loads the component) and returns the function from a batch of
    jobs to (artifacts in order, usage); it is pickled to Ray workers, so it holds settings and unloaded
    components, not loaded models. `account(jobs, usage)` runs here, on the driver, after each batch is on
    disk: the stage's cost report. `needs`: what one worker holds (a GPU for a local model)."""

    worker: Callable[[], Callable[[Sequence[ArtifactJob]], tuple[Sequence[Value], Usage]]]
    account: Callable[[Sequence[ArtifactJob], Usage], None] = _no_account
    needs: Needs = DEFAULT_NEEDS


@dataclass(frozen=True)
class _Plain:
    """A plain `Generate` as a StageWork worker (no usage); on Ray it is pickled as it is."""

    make: Generate

    def __call__(self) -> Callable[[Sequence[ArtifactJob]], tuple[Sequence[Value], Usage]]:
        return lambda jobs: (self.make(jobs), {})


@dataclass(frozen=True)
class _Batches:
    """An engine's worker over whole batches: each engine item is one batch of jobs."""

    worker: Callable[[], Callable[[Sequence[ArtifactJob]], tuple[Sequence[Value], Usage]]]

    def __call__(self) -> Callable[[list[Any]], list[Any]]:
        run = self.worker()
        return lambda batches: [run(b) for b in batches]


@dataclass(frozen=True)
class ImportedArtifacts:
    """A released intermediates file ({item_id: value}), read-only, with where it came from."""

    path: Path
    sha256: str
    provenance: str
    """What the user declares, e.g. 'yzy-bupt/LDRE@<commit> CIRCO/annotations/test_multi_gpt3-5.json'."""
    values: Mapping[str, Value]

    @classmethod
    def load(cls, root: str | os.PathLike[str], rel: str | os.PathLike[str], *, provenance: str,
             id_field: str | None = None, value_field: str | None = None) -> ImportedArtifacts:
        """Read `rel` below `root` (it may not leave it): a JSON object {item_id: value}, or, with `id_field`
        and `value_field`, a JSON list of records (LDRE's `test_multi_gpt3-5.json`: one record per query,
        `id` and `multi_gpt-3.5_opt`). Anything else is refused naming the file, record and field."""
        path = Root(root, what="the artifact import folder").join(rel, field="path")
        try:
            blob = path.read_bytes()
        except OSError as e:
            raise DatasetError(f"cannot read the imported artifacts: {e.strerror or e}", file=path) from None
        try:
            data = json.loads(blob)
        except ValueError as e:
            raise DatasetError(f"imported artifacts are not JSON: {e}", file=path) from None
        if (id_field is None) != (value_field is None):
            raise ValueError("an import of a list of records needs both id_field and value_field")
        if id_field is not None and value_field is not None:
            data = _records_to_mapping(data, path, id_field, value_field)
        if not isinstance(data, dict):
            raise DatasetError("imported artifacts must be a JSON object {item_id: value} (or a list of "
                               "records with id_field and value_field)", file=path)
        for k, v in data.items():
            ok = isinstance(v, str) or (isinstance(v, list) and all(isinstance(t, str) for t in v)) \
                or isinstance(v, dict)
            if not ok:
                raise DatasetError("value must be a text, a list of texts or an object", file=path, record=k,
                                   field=value_field)
        if not provenance.strip():
            raise ValueError("an import needs its provenance (where the file was released, repo@commit)")
        return cls(path, hashlib.sha256(blob).hexdigest(), provenance.strip(), dict(data))

    def record(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "provenance": self.provenance,
                "items": len(self.values)}

    def get(self, item_id: str) -> Value:
        """The imported value of one item; a missing one is refused naming the file and the id."""
        if item_id not in self.values:
            raise DatasetError("no imported artifact for this item", file=self.path, record=item_id)
        return self.values[item_id]


class ArtifactStore:
    """A folder of artifact namespaces; `generate` fills in what is missing, one part per session."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._guard = Root(self.root, what="the artifact store")

    def folder(self, spec: ArtifactSpec) -> Path:
        return self._guard.join(f"{spec.stage}-{spec.namespace[:24]}", field="stage")

    # ------------------------------------------------------------------------------------------ reading

    def load(self, spec: ArtifactSpec) -> dict[str, Value]:
        """key -> value of every finished artifact of `spec` (the first one wins on a duplicate)."""
        folder = self.folder(spec)
        out: dict[str, Value] = {}
        for part in sorted(folder.glob("part-*.jsonl")) if folder.is_dir() else []:
            for rec in _read_part(part):
                out.setdefault(rec["key"], rec["value"])
        return out

    # ------------------------------------------------------------------------------------------ writing

    def generate(self, spec: ArtifactSpec, items: Sequence[tuple[str, str]], make: Generate | StageWork, *,
                 shard: Shard = Shard(), batch_size: int = 8,
                 imported: ImportedArtifacts | None = None, engine: Engine | None = None,
                 label: str | None = None) -> dict[str, Value]:
        """item id -> artifact for the (id, content key) `items` this shard owns, generating what is missing.

        With `imported`, values come from the released file only (never generated, never written here), and
        an item it lacks is refused. Otherwise the batches run on `engine` (default: here, one after the
        other) and each finished batch is written here, on disk before the next result is taken, so a killed
        run keeps what finished on any engine. `label`: show a progress bar of the batches.
        """
        mine = [(i, c) for i, c in items if shard.owns(i)]
        if imported is not None:
            return {i: imported.get(i) for i, _ in mine}
        have = self.load(spec)
        todo = [ArtifactJob(i, c, spec.seed(i)) for i, c in mine if spec.key(i, c) not in have]
        if todo:
            self._generate(spec, todo, make, batch_size, have, engine or LocalEngine(), label)
        return {i: have[spec.key(i, c)] for i, c in mine}

    def _generate(self, spec: ArtifactSpec, todo: list[ArtifactJob], make: Generate | StageWork,
                  batch_size: int, have: dict[str, Value], engine: Engine, label: str | None) -> None:
        work = make if isinstance(make, StageWork) else StageWork(_Plain(make))
        step = max(1, batch_size)
        batches = [todo[a:a + step] for a in range(0, len(todo), step)]
        folder = self.folder(spec)
        folder.mkdir(parents=True, exist_ok=True)
        spec_file = folder / "spec.json"
        if not spec_file.exists():
            write_json(spec_file, {"format": ARTIFACT_FORMAT, **spec.record()})
        part = folder / f"part-{uuid.uuid4().hex}.jsonl"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o666)
        results = engine.map(_Batches(work.worker), batches, needs=work.needs)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f, progress_bar(label is not None) as bar:
                task = bar.add_task(label or "", total=len(todo))
                for batch, (made, usage) in results:
                    values = list(made)
                    if len(values) != len(batch):
                        raise RuntimeError(f"stage {spec.stage!r}: {len(values)} artifacts for "
                                           f"{len(batch)} items")
                    lines = []
                    for job, value in zip(batch, values, strict=True):
                        key = spec.key(job.id, job.content_key)
                        have[key] = value
                        lines.append(json.dumps({"key": key, "id": job.id, "seed": job.seed, "value": value},
                                                ensure_ascii=False, allow_nan=False))
                    f.write("\n".join(lines) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                    work.account(batch, usage)
                    bar.advance(task, len(batch))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
            if part.exists() and part.stat().st_size == 0:
                part.unlink()

    def compact(self, spec: ArtifactSpec) -> Path | None:
        """Rewrite every part of `spec` as one (atomically: readers see the old parts or the new one)."""
        folder = self.folder(spec)
        parts = sorted(folder.glob("part-*.jsonl")) if folder.is_dir() else []
        if len(parts) <= 1:
            return parts[0] if parts else None
        records: dict[str, dict[str, Any]] = {}
        for p in parts:
            for rec in _read_part(p):
                records.setdefault(rec["key"], rec)
        merged = _write_merged(folder, spec, records)
        for p in parts:
            if p != merged:
                p.unlink()
        return merged


def _records_to_mapping(data: Any, path: Path, id_field: str, value_field: str) -> dict[str, Any]:
    if not isinstance(data, list):
        raise DatasetError(f"expected a JSON list of records with {id_field!r} and {value_field!r}",
                           file=path)
    out: dict[str, Any] = {}
    for n, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DatasetError("a record must be a JSON object", file=path, record=str(n))
        if id_field not in rec or isinstance(rec[id_field], bool) or not isinstance(rec[id_field], str | int):
            raise DatasetError("missing or non-scalar id", file=path, record=str(n), field=id_field)
        if value_field not in rec:
            raise DatasetError("missing field", file=path, record=str(rec[id_field]), field=value_field)
        key = str(rec[id_field])
        if key in out:
            raise DatasetError("the same id twice", file=path, record=key, field=id_field)
        out[key] = rec[value_field]
    return out


def merge_stores(target: ArtifactStore, sources: Sequence[ArtifactStore], spec: ArtifactSpec) -> int:
    """Copy the artifacts of `spec` from other stores (other shards' machines) into `target`; returns how many
    were new. The copy is one atomic part, so an interrupted merge adds nothing half-way."""
    have = target.load(spec)
    new: dict[str, dict[str, Any]] = {}
    for src in sources:
        folder = src.folder(spec)
        for part in sorted(folder.glob("part-*.jsonl")) if folder.is_dir() else []:
            for rec in _read_part(part):
                if rec["key"] not in have:
                    new.setdefault(rec["key"], rec)
    if new:
        _write_merged(target.folder(spec), spec, new)
    return len(new)


def _write_merged(folder: Path, spec: ArtifactSpec, records: Mapping[str, dict[str, Any]]) -> Path:
    """One part holding `records` (sorted by key), named by its content, written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "spec.json").exists():
        write_json(folder / "spec.json", {"format": ARTIFACT_FORMAT, **spec.record()})
    body = "".join(json.dumps(records[k], ensure_ascii=False, sort_keys=True) + "\n" for k in sorted(records))
    path = folder / f"part-merged-{hashlib.sha256(body.encode()).hexdigest()[:32]}.jsonl"
    with atomic_write(path) as f:
        f.write(body)
    return path


def _read_part(path: Path) -> Iterator[dict[str, Any]]:
    """The whole records of a part; a line cut short by a kill (or damaged) is skipped and logged."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as e:
        log.warning("artifact part %s is unreadable (%s): its items will be generated again", path, e)
        return
    for n, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            log.info("artifact part %s line %d is incomplete (an interrupted run): skipped", path, n)
            continue
        if isinstance(rec, dict) and isinstance(rec.get("key"), str) and "value" in rec:
            yield rec


__all__ = [
    "ArtifactJob", "ArtifactSpec", "ArtifactStore", "ImportedArtifacts", "Shard", "StageWork", "Usage",
    "item_seed", "merge_stores", "sha256_text",
]
