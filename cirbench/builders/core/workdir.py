"""Resumable, shardable work: one finished unit = one file, written atomically into `<out>.work/`.

Why this shape: a build that edits thousands of images must survive being killed (SIGKILL, a pre-empted GPU
node) and must split across machines. Each unit of work (one source image with all its edits, or one query
to refine) is keyed by a stable id and computed from the config and its inputs alone, so:

- a unit is done exactly when its JSON record exists; its images are written first, the record last, each by
  write-to-temp-then-rename, so a kill leaves either a whole unit or none (no lost or duplicated records);
- a rerun skips done units and redoes the rest with the same seeds: the result equals an uninterrupted run;
- `--shard i/n` takes every n-th unit of the ordered list; shards share the work dir (or are copied together:
  file names never collide), and `merge` exports the union, which is the same set a single run exports.

The export is a pure function of the config, the pool and the set of unit records: no timestamps, no shard
numbers, no host names, so a merged build is byte-identical to a single run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from cirbench.core.io import atomic_write
from cirbench.engine.base import Engine, Needs, WorkerFactory

T = TypeVar("T")
log = logging.getLogger("cirbench.builders")


class Deferred(RuntimeError):
    """A unit could not finish for a reason that may pass (LMM server down, editor out of memory).

    The unit is not written, so the next run of the same command retries it; nothing is logged as rejected.
    """


class BuildIncomplete(RuntimeError):
    """Some units could not finish this time; running the same command again retries only those."""


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' (0-based i) -> (i, n); None stays None."""
    if text is None:
        return None
    try:
        i_s, n_s = text.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError as e:
        raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from e
    check_shard((i, n))
    return i, n


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int]:
    i, n = shard or (0, 1)
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    return i, n


def shard_slice(items: Sequence[T], shard: tuple[int, int] | None) -> list[T]:
    """Every n-th item from the i-th: balanced, and stable for a fixed ordered list."""
    i, n = check_shard(shard)
    return list(items[i::n])


def atomic_bytes(path: Path, data: bytes, *, durable: bool = False) -> None:
    """`data` written atomically to `path` (see cirbench.core.io.atomic_write); fsync is off by default
    because a unit's many files need only survive a killed process, which the rename alone guarantees."""
    with atomic_write(path, binary=True, durable=durable) as f:
        f.write(data)


def dumps(obj: Any) -> bytes:
    """Canonical JSON (sorted keys): the same record always has the same bytes."""
    return (json.dumps(obj, sort_keys=True, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode()


def fingerprint_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class WorkDir:
    """`<out>.work/`: config.json (what the units were made with), units/, blobs/, shards/, stage caches."""

    def __init__(self, out: str | os.PathLike[str], *, durable: bool = False) -> None:
        self.out = Path(out)
        self.root = self.out.with_name(self.out.name + ".work")
        self.durable = durable

    # -------------------------------------------------------------------------------------------- config

    def bind(self, identity: Mapping[str, Any], settings: Mapping[str, Any] | None = None) -> str:
        """Record what this work dir's units depend on (`identity`); refuse to mix units made with something
        else. `settings` (the full config, for a later merge) is stored too and may change between runs."""
        fp = fingerprint_of(identity)
        path = self.root / "config.json"
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("fingerprint") != fp:
                raise ValueError(
                    f"{self.root} holds work made with a different config or sources (fingerprint "
                    f"{old.get('fingerprint')} != {fp}); delete it, or build into another --out"
                )
        record = {"fingerprint": fp, "identity": dict(identity), "settings": dict(settings or {})}
        if not path.exists() or json.loads(path.read_text()) != json.loads(dumps(record)):
            atomic_bytes(path, dumps(record), durable=True)
        return fp

    def identity(self) -> dict[str, Any]:
        path = self.root / "config.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: no build has started for {self.out}")
        return dict(json.loads(path.read_text()))

    # -------------------------------------------------------------------------------------------- units

    @staticmethod
    def key(uid: str) -> str:
        """A file-system-safe name for any unit id (ids can hold slashes, spaces, unicode)."""
        return hashlib.sha1(uid.encode()).hexdigest()[:20]

    def unit_path(self, uid: str) -> Path:
        k = self.key(uid)
        return self.root / "units" / k[:2] / f"{k}.json"

    def blob_path(self, name: str) -> Path:
        return self.root / "blobs" / name

    def has_unit(self, uid: str) -> bool:
        return self.unit_path(uid).is_file()

    def load_unit(self, uid: str) -> dict[str, Any]:
        rec = json.loads(self.unit_path(uid).read_text())
        if rec.get("unit") != uid:
            raise ValueError(f"{self.unit_path(uid)} holds unit {rec.get('unit')!r}, expected {uid!r}")
        return dict(rec)

    def save_unit(
        self, uid: str, record: Mapping[str, Any], blobs: Mapping[str, bytes] | None = None
    ) -> None:
        """Blobs first, the record last: the record's existence is the unit's commit."""
        for name, data in (blobs or {}).items():
            atomic_bytes(self.blob_path(name), data, durable=self.durable)
        atomic_bytes(self.unit_path(uid), dumps({**record, "unit": uid}), durable=self.durable)

    def save_blob(self, name: str, data: bytes) -> None:
        atomic_bytes(self.blob_path(name), data, durable=self.durable)

    def read_blob(self, name: str) -> bytes:
        return self.blob_path(name).read_bytes()

    # -------------------------------------------------------------------------------------------- shards

    def shard_path(self, shard: tuple[int, int]) -> Path:
        i, n = shard
        return self.root / "shards" / f"{i}-of-{n}.json"

    def mark_shard(self, shard: tuple[int, int], info: Mapping[str, Any]) -> None:
        atomic_bytes(self.shard_path(shard), dumps(dict(info)), durable=True)

    def shard_done(self, shard: tuple[int, int]) -> dict[str, Any] | None:
        p = self.shard_path(shard)
        return dict(json.loads(p.read_text())) if p.is_file() else None

    def collect_shards(self, n: int) -> list[dict[str, Any]]:
        """The markers of shards 0..n-1, or an error naming the ones not finished."""
        markers = [self.shard_done((i, n)) for i in range(n)]
        missing = [i for i, m in enumerate(markers) if m is None]
        if missing:
            raise FileNotFoundError(
                f"{self.root}: shard(s) {missing} of {n} have not finished; run them "
                "(same config, sources and --out) before merging"
            )
        found = [m for m in markers if m is not None]
        limits = {json.dumps(m.get("limit")) for m in found}
        if len(limits) > 1:
            raise ValueError(f"{self.root}: shards were run with different --limit values {sorted(limits)}")
        return found

    # -------------------------------------------------------------------------------------------- artefacts

    def read_json(self, name: str) -> Any | None:
        p = self.root / name
        return json.loads(p.read_text()) if p.is_file() else None

    def write_json(self, name: str, obj: Any) -> None:
        atomic_bytes(self.root / name, dumps(obj), durable=True)

    def record_models(self, models: Mapping[str, Any]) -> str:
        """Keep `models/<key>.json` (what the units are made with: editor, LMMs, checks); returns the key
        that unit records cite, so a merged build can say which models made each unit."""
        key = fingerprint_of(models)
        if self.read_json(f"models/{key}.json") is None:
            self.write_json(f"models/{key}.json", models)
        return key


def start_build(cfg: Mapping[str, Any], out: str | os.PathLike[str], sources: str | None,
                shard: tuple[int, int] | None, *, source_forms: str) -> tuple[str, tuple[int, int], WorkDir]:
    """(source spec, (i, n), work dir): what every resumable build settles before it binds its work dir.

    The sources are the argument, else the config's `sources.default`; `source_forms` lists the accepted
    forms for the error that neither was given. The work dir is `<out>.work/`, fsync'd as `work.durable` says.
    """
    spec = sources or cfg["sources"]["default"]
    if not spec:
        raise ValueError(f"no sources: pass --sources ({source_forms}) or set sources.default in the config")
    i, n = check_shard(shard)
    return spec, (i, n), WorkDir(out, durable=bool(cfg["work"]["durable"]))


class LazyFiles(Mapping[str, bytes]):
    """Output files (relative path -> bytes) read from a source only when written, one at a time.

    `write_dataset(files=...)` iterates its mapping once; handing it this instead of a dict keeps the export's
    memory at one image however large the benchmark (30k edited 1024 px PNGs would be tens of GB).
    """

    def __init__(
        self,
        read: Callable[[Any], bytes],
        sources: Mapping[str, Any],
        inline: Mapping[str, bytes] | None = None,
    ) -> None:
        """`read(sources[rel])` gives the bytes of file `rel`; files in `inline` are given as they are."""
        self.read, self.sources, self.inline = read, dict(sources), dict(inline or {})

    def __getitem__(self, rel: str) -> bytes:
        return self.inline[rel] if rel in self.inline else self.read(self.sources[rel])

    def __iter__(self) -> Iterator[str]:
        yield from self.inline
        yield from (k for k in self.sources if k not in self.inline)

    def __len__(self) -> int:
        return len(set(self.inline) | set(self.sources))


class _Tally:
    """What a run of units has done: saves, deferrals (and the streak that gives up), the progress bar."""

    def __init__(self, work: WorkDir, advance: Callable[[], None], give_up_after: int) -> None:
        self.work, self.advance, self.give_up_after = work, advance, give_up_after
        self.deferred: list[tuple[str, str]] = []
        self.streak = 0

    def failed(self, key: str, e: Deferred) -> bool:
        """Note a deferred unit; True when the run should stop (too many in a row)."""
        log.warning("deferred %s: %s", key, e)
        self.deferred.append((key, str(e)))
        self.streak += 1
        self.advance()
        return self.streak >= self.give_up_after

    def saved(self, key: str, result: tuple[Mapping[str, Any], Mapping[str, bytes]]) -> None:
        self.work.save_unit(key, *result)
        self.streak = 0
        self.advance()

    def check(self, total: int, noun: str) -> None:
        """BuildIncomplete when any unit was deferred."""
        if not self.deferred:
            return
        stopped = self.streak >= self.give_up_after
        how = (
            f"stopped after {self.streak} {noun} in a row failed"
            if stopped
            else f"{len(self.deferred)} of {total} {noun} could not finish"
        )
        raise BuildIncomplete(
            f"{how} (first: {self.deferred[0][0]}: {self.deferred[0][1]}); the finished units are "
            "kept: run the same command again to retry the rest"
        )


def run_units(
    work: WorkDir,
    todo: Sequence[T],
    uid: Callable[[T], str],
    main: Callable[[Any], Any],
    *,
    plan: Callable[[T], Any] | None = None,
    finish: Callable[[Any], tuple[Mapping[str, Any], Mapping[str, bytes]]] | None = None,
    lookahead: int = 0,
    label: str,
    progress: bool,
    give_up_after: int = 5,
    noun: str = "units",
) -> None:
    """Run each unit as finish(main(plan(item))) and save it; a Deferred unit is skipped (retried next run).

    `main` runs on the calling thread (the one holding the GPU pipeline). With lookahead k > 0, `plan` runs up
    to k units ahead in a thread pool and `finish` runs in one background thread while the next unit's `main`
    runs; saving stays on the calling thread. Without `plan`/`finish`, `main(item)` returns (record, blobs).
    After `give_up_after` deferrals in a row the run stops early (the LMM server is down, the editor cannot
    load the batch): waiting out every unit's retries would only cost time. Raises BuildIncomplete when any
    unit was deferred.
    """
    plan_ = plan or (lambda item: item)
    finish_ = finish or (lambda m: m)

    with _bar(progress, label, len(todo)) as advance:
        tally = _Tally(work, advance, give_up_after)
        if lookahead <= 0:
            for item in todo:
                key = uid(item)
                try:
                    result = finish_(main(plan_(item)))
                except Deferred as e:
                    if tally.failed(key, e):
                        break
                    continue
                tally.saved(key, result)
        else:
            _pipelined(todo, uid, plan_, main, finish_, lookahead, tally.failed, tally.saved)
    tally.check(len(todo), noun)


def run_units_on(
    engine: Engine,
    factory: WorkerFactory,
    work: WorkDir,
    todo: Sequence[T],
    uid: Callable[[T], str],
    commit: Callable[[Any], tuple[Mapping[str, Any], Mapping[str, bytes]]],
    *,
    needs: Needs,
    label: str,
    progress: bool,
    give_up_after: int = 5,
    noun: str = "units",
) -> None:
    """`run_units` on an engine: the engine's workers (built by `factory`) compute the units, each returning
    a result or a Deferred, and this process, the driver, saves each finished unit as it arrives
    (`commit(result)` gives its record and blobs). So a killed run keeps exactly the units saved here, as a
    local run does, and a rerun computes only the others."""
    with _bar(progress, label, len(todo)) as advance:
        tally = _Tally(work, advance, give_up_after)
        results = engine.map(factory, todo, needs=needs)
        try:
            for item, out in results:
                key = uid(item)
                if isinstance(out, Deferred):
                    if tally.failed(key, out):
                        break
                    continue
                tally.saved(key, commit(out))
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
    tally.check(len(todo), noun)


def _pipelined(
    todo: Sequence[T],
    uid: Callable[[T], str],
    plan: Callable[[T], Any],
    main: Callable[[Any], Any],
    finish: Callable[[Any], tuple[Mapping[str, Any], Mapping[str, bytes]]],
    lookahead: int,
    failed: Callable[[str, Deferred], bool],
    saved: Callable[[str, tuple[Mapping[str, Any], Mapping[str, bytes]]], None],
) -> None:
    """plan k ahead in threads, main here, finish one behind in a thread; results handled here, in order."""
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    items = iter(todo)
    planned: deque[tuple[str, Future[Any]]] = deque()
    finishing: deque[tuple[str, Future[Any]]] = deque()
    stop = False
    with (
        ThreadPoolExecutor(lookahead, thread_name_prefix="plan") as pre,
        ThreadPoolExecutor(1, thread_name_prefix="finish") as post,
    ):

        def top_up() -> None:
            while len(planned) < lookahead and not stop:
                item = next(items, None)
                if item is None:
                    return
                planned.append((uid(item), pre.submit(plan, item)))

        def reap(keep: int) -> None:
            nonlocal stop
            while len(finishing) > keep:
                key, fut = finishing.popleft()
                try:
                    result = fut.result()
                except Deferred as e:
                    stop = failed(key, e) or stop
                    continue
                saved(key, result)

        try:
            top_up()
            while planned and not stop:
                key, fut = planned.popleft()
                top_up()
                try:
                    m = main(fut.result())
                except Deferred as e:
                    stop = failed(key, e)
                    continue
                finishing.append((key, post.submit(finish, m)))
                reap(keep=1)  # one unit finishes in the background while the next is edited
            reap(keep=0)
        finally:
            for _, f in planned:
                f.cancel()


@contextlib.contextmanager
def _bar(enabled: bool, label: str, total: int) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    from cirbench.core.progress import progress_bar

    with progress_bar(True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda: bar.advance(task)
