"""`cirbench train`: fit the fusion head of `cirbench-fusion` on a built benchmark's train split.

This is the in-domain training experiment of the EDIR paper at CPU scale: both backbones stay frozen, so
their features are extracted once (reference images, modification texts, gallery images) and only the small
head (cirbench/models/embedded.py) is trained, with a symmetric InfoNCE loss against the target images.
Seconds to minutes on a laptop CPU; deterministic for a given seed, machine and thread count.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cirbench.core.dataset import load_native
from cirbench.core.io import file_mode, write_json
from cirbench.core.types import DatasetError, Item, Task, query_exclusions
from cirbench.models import embedded as E

if TYPE_CHECKING:
    import torch


@dataclass
class TrainFeatures:
    """Frozen-backbone features of one split, and the training rows that index into them."""

    corpus: np.ndarray
    """(N, 1280) gallery image features, in corpus order."""
    references: np.ndarray
    """(R, 1280) reference image features."""
    texts: np.ndarray
    """(T, 384) modification text features."""
    row_ref: np.ndarray
    row_text: np.ndarray
    row_pos: list[np.ndarray]
    """Corpus positions that count as a right answer (multi-target queries have several)."""
    row_excl: list[np.ndarray]
    """Corpus positions the protocol never ranks for this query (the reference image), minus positives."""
    row_hard: list[np.ndarray] = field(default_factory=list)
    """Hard negatives always kept among the sampled documents: the reference when it is in the gallery
    (and not excluded) and the benchmark's hard_negative_ids."""


@contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    """A rich progress bar, or a silent stand-in with the same add_task/update interface."""
    if not enabled:
        class _Null:
            def add_task(self, *a: Any, **k: Any) -> int:
                return 0

            def update(self, *a: Any, **k: Any) -> None:
                pass

        yield _Null()
        return
    from rich import progress as rp

    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn(),
               rp.TimeElapsedColumn(), rp.TimeRemainingColumn(), rp.TextColumn("{task.fields[info]}"))
    with rp.Progress(*columns) as bar:
        yield bar


def _image_features(items: Sequence[Item], *, resolution: int, channels_last: bool, device: str | None,
                    bar: Any, label: str, chunk: int = 64) -> np.ndarray:
    """Decode + preprocess in two threads while the backbone runs on the previous chunk."""
    out = np.zeros((len(items), E.DESCRIPTOR_DIM), dtype=np.float32)
    task_id = bar.add_task(label, total=len(items), info="")

    def prep(it: Item) -> np.ndarray:
        return E.preprocess_image(it.load_image(), resolution)

    with ThreadPoolExecutor(max_workers=2) as pool:
        chunks = [items[s:s + chunk] for s in range(0, len(items), chunk)]
        pending = pool.map(lambda c: np.stack([prep(it) for it in c]), chunks)
        for s, pixels in zip(range(0, len(items), chunk), pending, strict=True):
            f = E.image_features(pixels, resolution=resolution, channels_last=channels_last, device=device)
            out[s:s + len(pixels)] = f[:, E.IMAGE_DIM:]  # the fusion descriptor
            bar.update(task_id, advance=len(pixels))
    return out


def extract_features(task: Task, *, resolution: int = E.DEFAULT_RESOLUTION,
                     channels_last: bool = E.DEFAULT_CHANNELS_LAST, device: str | None = None,
                     use_text_variants: bool = True, bar: Any = None) -> TrainFeatures:
    """Features for every labelled query with a reference image; each text variant is one more row."""
    if bar is None:
        with _progress(False) as b:
            return extract_features(task, resolution=resolution, channels_last=channels_last, device=device,
                                    use_text_variants=use_text_variants, bar=b)
    pos = task.corpus_positions
    excl = query_exclusions(task)
    refs: dict[str, int] = {}
    ref_items: list[Item] = []
    texts: dict[str, int] = {}
    row_ref, row_text, row_pos, row_excl, row_hard = [], [], [], [], []
    for q, ex in zip(task.queries, excl, strict=True):
        if q.item.image is None or not q.relevant_ids or q.item.text is None:
            continue
        key = q.reference_id or f"query:{q.id}"
        if key not in refs:
            refs[key] = len(ref_items)
            ref_items.append(Item(id=key, image=q.item.image))
        p = np.array(sorted({pos[r] for r in q.relevant_ids}), dtype=np.int64)
        e = np.array(sorted(set(ex) - set(p.tolist())), dtype=np.int64)
        hard = {pos[h] for h in (*q.hard_negative_ids, q.reference_id) if h is not None and h in pos}
        h = np.array(sorted(hard - set(p.tolist()) - set(e.tolist())), dtype=np.int64)
        variants = [q.item.text] + ([a.text for a in q.alt_items if a.text is not None] if use_text_variants
                                    else [])
        for t in variants:
            texts.setdefault(t, len(texts))
            row_ref.append(refs[key])
            row_text.append(texts[t])
            row_pos.append(p)
            row_excl.append(e)
            row_hard.append(h)
    if not row_ref:
        raise DatasetError(f"split {task.split!r} has no labelled query with a reference image and a text "
                           "to train on", file=task.extra.get("dataset_dir"))
    # Reference images that are gallery images are encoded once.
    corpus = _image_features(task.corpus, resolution=resolution, channels_last=channels_last, device=device,
                             bar=bar, label="gallery images")
    in_corpus = [k for k in refs if k in pos]
    others = [it for it in ref_items if it.id not in pos]
    ref_feats = np.zeros((len(ref_items), E.DESCRIPTOR_DIM), dtype=np.float32)
    for k in in_corpus:
        ref_feats[refs[k]] = corpus[pos[k]]
    if others:
        ref_feats[[refs[it.id] for it in others]] = _image_features(
            others, resolution=resolution, channels_last=channels_last, device=device, bar=bar,
            label="reference images")
    tid = bar.add_task("texts", total=len(texts), info="")
    text_feats = E.text_backbone(device).encode(list(texts))
    bar.update(tid, advance=len(texts))
    return TrainFeatures(corpus=corpus, references=ref_feats, texts=text_feats,
                         row_ref=np.array(row_ref, dtype=np.int64),
                         row_text=np.array(row_text, dtype=np.int64), row_pos=row_pos, row_excl=row_excl,
                         row_hard=row_hard)


def _masks(rows: np.ndarray, feats: TrainFeatures, n_corpus: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N) boolean positive and excluded masks for a batch of rows."""
    import torch

    pos = torch.zeros(len(rows), n_corpus, dtype=torch.bool)
    excl = torch.zeros(len(rows), n_corpus, dtype=torch.bool)
    for b, r in enumerate(rows):
        pos[b, torch.from_numpy(feats.row_pos[r])] = True
        if len(feats.row_excl[r]):
            excl[b, torch.from_numpy(feats.row_excl[r])] = True
    return pos, excl


def _multi_positive_nce(logits: torch.Tensor, pos: torch.Tensor, excl: torch.Tensor) -> torch.Tensor:
    """-log(sum over positives / sum over all non-excluded), averaged over rows that have a positive."""
    import torch

    neg_inf = torch.finfo(logits.dtype).min
    allowed = logits.masked_fill(excl, neg_inf)
    num = allowed.masked_fill(~pos, neg_inf).logsumexp(-1)
    keep = pos.any(-1)
    return (allowed.logsumexp(-1) - num)[keep].mean()


def contrastive_loss(params: dict[str, torch.Tensor], feats: TrainFeatures, rows: np.ndarray,
                     doc_idx: torch.Tensor, *, dropout: float, training: bool,
                     input_dropout: float = 0.0) -> torch.Tensor:
    """Symmetric InfoNCE: each query against the sampled gallery (any relevant id is a positive, the
    reference image is masked as the eval protocol masks it), and each batch target against the batch's
    queries. `input_dropout` drops backbone feature channels: with frozen features there is no image
    augmentation, and a few thousand queries are otherwise memorised."""
    import torch
    import torch.nn.functional as F

    def inp(x: np.ndarray) -> torch.Tensor:
        return F.dropout(torch.from_numpy(x), input_dropout, training)

    n = len(feats.corpus)
    pos, excl = _masks(rows, feats, n)
    pos, excl = pos[:, doc_idx], excl[:, doc_idx]
    q = E.head_forward_query(params, inp(feats.references[feats.row_ref[rows]]),
                             inp(feats.texts[feats.row_text[rows]]), dropout=dropout, training=training)
    d = E.head_forward_document(params, inp(feats.corpus[doc_idx.numpy()]))
    logits = params["logit_scale"].exp().clamp(max=100.0) * q @ d.T
    loss_q2d = _multi_positive_nce(logits, pos, excl)
    cols = pos.any(0)
    loss_d2q = _multi_positive_nce(logits[:, cols].T, pos[:, cols].T, excl[:, cols].T)
    return (loss_q2d + loss_d2q) / 2


def _doc_sample(rows: np.ndarray, feats: TrainFeatures, max_docs: int, g: torch.Generator) -> torch.Tensor:
    """The whole gallery when it fits, else the batch's positives and hard negatives plus random negatives
    up to max_docs: projecting the whole gallery at every step is most of a step's cost."""
    import torch

    n = len(feats.corpus)
    if n <= max_docs:
        return torch.arange(n)
    keep = [feats.row_pos[r] for r in rows] + ([feats.row_hard[r] for r in rows] if feats.row_hard else [])
    positives = torch.from_numpy(np.unique(np.concatenate(keep)))
    rest = torch.ones(n, dtype=torch.bool)
    rest[positives] = False
    others = rest.nonzero().squeeze(1)
    pick = others[torch.randperm(len(others), generator=g)[:max(0, max_docs - len(positives))]]
    return torch.cat([positives, pick]).sort().values


def recall_at_1(params: dict[str, torch.Tensor], feats: TrainFeatures) -> float:
    """R@1 over the rows (reference masked): a sanity figure for the json, not a benchmark result."""
    import torch

    with torch.no_grad():
        q = E.head_forward_query(params, torch.from_numpy(feats.references[feats.row_ref]),
                                 torch.from_numpy(feats.texts[feats.row_text]))
        d = E.head_forward_document(params, torch.from_numpy(feats.corpus))
        s = q @ d.T
        for r in range(len(s)):
            s[r, torch.from_numpy(feats.row_excl[r])] = -float("inf")
        top = s.argmax(1).numpy()
    return float(np.mean([top[r] in set(feats.row_pos[r].tolist()) for r in range(len(top))]))


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    """safetensors written beside the target, then renamed: the file is whole or absent."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, file_mode())  # the umask's permissions, not mkstemp's 0600
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().float() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fit(feats: TrainFeatures, *, bar: Any, epochs: int, batch_size: int, lr: float, seed: int,
         weight_decay: float, dropout: float, input_dropout: float, dim: int, hidden: int, max_docs: int,
         on_epoch: Callable[[int, float], None] | None) -> tuple[dict[str, torch.Tensor], list[float]]:
    """AdamW with linear warm-up and cosine decay; returns the parameters and the mean loss per epoch."""
    import torch

    # Seeded here, after feature extraction: building a backbone draws from the global RNG, and it is built
    # only in the first call of a process, so seeding earlier would make dropout depend on history.
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    params = E.init_head(dim=dim, hidden=hidden, seed=seed)
    for p in params.values():
        p.requires_grad_(True)
    decay = [p for k, p in params.items() if k.endswith("proj.weight")
             or (k.startswith("mlp.") and k.endswith("weight"))]
    no_decay = [p for p in params.values() if all(p is not d for d in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    n_rows = len(feats.row_ref)
    steps = epochs * math.ceil(n_rows / batch_size)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / steps))))
    history: list[float] = []
    tid = bar.add_task("training", total=steps, info="")
    for epoch in range(epochs):
        perm = torch.randperm(n_rows, generator=g).numpy()
        total, count = 0.0, 0
        for s in range(0, n_rows, batch_size):
            rows = perm[s:s + batch_size]
            loss = contrastive_loss(params, feats, rows, _doc_sample(rows, feats, max_docs, g),
                                    dropout=dropout, input_dropout=input_dropout, training=True)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            value = float(loss.detach())
            total += value * len(rows)
            count += len(rows)
            bar.update(tid, advance=1, info=f"epoch {epoch + 1}/{epochs} loss {value:.4f}")
        history.append(total / count)
        if on_epoch is not None:
            on_epoch(epoch, history[-1])
    return {k: v.detach() for k, v in params.items()}, history


def train_fusion_head(dataset_dir: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                      split: str = "train", epochs: int = 30, batch_size: int = 256, lr: float = 2e-3,
                      seed: int = 0, progress: bool = True, weight_decay: float = 0.05, dropout: float = 0.1,
                      input_dropout: float = 0.2, dim: int = 256, hidden: int = 512,
                      resolution: int = E.DEFAULT_RESOLUTION, channels_last: bool = E.DEFAULT_CHANNELS_LAST,
                      max_docs: int = 2048, device: str | None = "cpu", threads: int | None = 1,
                      command: str | None = None,
                      on_epoch: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train a fusion head on `split` of a native dataset; write `out_path` (.safetensors) and its .json.

    Returns the json metadata: config, training command, dataset name and revision, loss per epoch, the
    final training loss and the in-sample R@1.

    `threads` is the torch thread count while it runs (None: leave it). One is the default: the head's
    matmuls are small, and on a shared 2-core machine a second OpenMP thread that waits for a descheduled
    sibling made training steps 20x and backbone passes 2-3x slower in measurement; a fixed count also
    keeps the result reproducible. Image decoding still runs in two threads.
    """
    import torch

    out = Path(out_path)
    if out.suffix != ".safetensors":
        raise ValueError(f"the head is written as safetensors: {str(out)!r} must end in .safetensors")
    if epochs < 1 or batch_size < 1:
        raise ValueError("epochs and batch_size must be at least 1")
    task = load_native(dataset_dir, split)
    t0 = time.perf_counter()
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    with _progress(progress) as bar:
        try:
            train_threads = torch.get_num_threads()
            feats = extract_features(task, resolution=resolution, channels_last=channels_last, device=device,
                                     bar=bar)
            t_feat = time.perf_counter() - t0
            params, history = _fit(feats, bar=bar, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                   weight_decay=weight_decay, dropout=dropout, input_dropout=input_dropout,
                                   dim=dim, hidden=hidden, max_docs=max_docs, on_epoch=on_epoch)
            r1 = recall_at_1(params, feats)
        finally:
            torch.set_num_threads(saved_threads)
    n_rows = len(feats.row_ref)
    seconds = time.perf_counter() - t0
    n_params = sum(int(v.numel()) for v in params.values())
    cmd = command or f"cirbench train {dataset_dir} --out {out} --epochs {epochs} --seed {seed}"
    config = {"dim": dim, "hidden": hidden, "image_dim": E.DESCRIPTOR_DIM, "text_dim": E.TEXT_DIM,
              "image_descriptor": [list(g) for g in E.DESCRIPTOR],
              "resolution": resolution, "channels_last": channels_last, "preprocess": E.PREPROCESS,
              "query": "normalize(P_img(LN(img_ref)) + P_txt(LN(txt)) + MLP([P_img(..); P_txt(..)]))",
              "document": "normalize(P_img(LN(img)))"}
    # One metadata key: safetensors keeps metadata in a hash map whose order varies between processes, and
    # the file's bytes must not (the json records their sha256).
    _save_safetensors(params, out, {E.HEAD_FORMAT: json.dumps({"config": config}, sort_keys=True)})
    meta: dict[str, Any] = {
        "format": E.HEAD_FORMAT, "format_version": 1, "sha256": E.sha256_file(out),
        "parameters": n_params, "config": config,
        "backbones": {"minilm": E.minilm_digest(), "effnet": E.effnet_digest()},
        "training": {
            "command": cmd, "dataset": task.name, "dataset_revision": task.revision, "split": split,
            "num_queries": len(task.queries), "num_rows": n_rows, "num_corpus": len(task.corpus),
            "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
            "dropout": dropout, "input_dropout": input_dropout, "seed": seed, "max_docs": max_docs,
            "loss": "symmetric multi-positive InfoNCE, learned temperature: query -> sampled gallery "
                    "(positives, hard negatives and the reference unless the protocol excludes it, random "
                    "negatives up to max_docs); target -> the batch's queries",
            "final_loss": history[-1], "loss_history": [round(x, 5) for x in history],
            "train_recall@1": round(r1, 4), "logit_scale": round(float(params["logit_scale"].exp()), 3),
            "seconds": round(seconds, 1), "feature_seconds": round(t_feat, 1),
            "torch": torch.__version__, "threads": train_threads,
        },
    }
    write_json(out.with_suffix(".json"), meta)
    return meta
