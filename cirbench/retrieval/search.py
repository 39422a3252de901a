"""Exact inner-product top-k search with bounded memory and a deterministic order.

Why this module exists: CIR metrics (Recall@K, mAP@K) are computed from rankings over galleries of
10^5-10^6 items, and real galleries contain duplicate images, so exact score ties are common. Every
ranking produced here is ordered by **score descending, then corpus position ascending**, including
ties at the top-k boundary, so results do not depend on chunk sizes, thread scheduling or backend.

Memory: scores are computed block by block (``query_chunk`` x ``corpus_chunk``, 256 MB in fp32 with
the defaults) and a running top-k is merged across corpus blocks, so peak memory is the gallery
itself plus a few blocks, independent of the gallery size.

Reproducibility caveat (measured, MKL sgemm): a float32 GEMM may round differently (1 ulp) when one of
its sides has fewer than ~12 rows, because the BLAS switches kernels. Every GEMM here is therefore
padded to at least ``_MIN_GEMM`` rows on both sides, which made the scores of an entry independent
of the block shape in all our measurements. Bit-identical results *across backends* (faiss uses its
own BLAS) still need scores that are exact in float32 (e.g. small dyadic vectors, as in the tests).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cirbench.retrieval.base import SEARCH_BACKENDS, SEARCH_DTYPES

__all__ = ["SearchResult", "exact_search", "subset_search"]

ArrayLike = np.ndarray | torch.Tensor

_DTYPES: dict[str, torch.dtype] = dict(zip(SEARCH_DTYPES, (torch.float32, torch.bfloat16), strict=True))
_BACKENDS = SEARCH_BACKENDS
# GEMMs with fewer rows than this on either side are padded (see module docstring); faiss switches
# from BLAS to its own SIMD loop below 20 queries, so its query blocks are padded to this too.
_MIN_GEMM = 32
# Working-set budget for the rare exact boundary-tie resolution and for validation passes.
_TIE_BUDGET_BYTES = 128 << 20
_NEG_INF = float("-inf")
# Count ties before a relevant item row by row in numpy on CPU; the vectorised path is for GPUs.
_PER_ROW_TIES_ON_CPU = True


@dataclass
class SearchResult:
    """Top-k results; row ``i`` belongs to query ``i``."""

    indices: np.ndarray  # (Q, K) int64 corpus positions, best first, -1 padding
    scores: np.ndarray  # (Q, K) float32, -inf at padding
    # (Q,) int64 1-based rank of the best eligible relevant item in the full ranking (0 = none);
    # None when ``relevant`` was not given.
    first_relevant_rank: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------
# validation and conversion helpers


def _shape(x: ArrayLike, name: str) -> tuple[int, int]:
    if not isinstance(x, np.ndarray | torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
    return int(x.shape[0]), int(x.shape[1])


def _check_inputs(queries: ArrayLike, corpus: ArrayLike, k: int) -> tuple[int, int, int]:
    nq, dq = _shape(queries, "queries")
    nc, dc = _shape(corpus, "corpus")
    if dq != dc:
        raise ValueError(f"dimension mismatch: queries have width {dq} but corpus has width {dc}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    for x, name in ((queries, "queries"), (corpus, "corpus")):
        kind = x.dtype.kind if isinstance(x, np.ndarray) else ("f" if x.dtype.is_floating_point else "i")
        if kind not in "fiub":
            raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return nq, nc, dq


def _check_finite(x: ArrayLike, name: str) -> None:
    """Reject NaN/inf, chunked so no gallery-sized mask is allocated.

    Row sums are ~8x cheaper than an elementwise ``isfinite`` and are non-finite whenever a row
    holds NaN/inf; only a non-finite sum (possibly a harmless overflow) triggers the exact check.
    """
    if isinstance(x, np.ndarray) and x.dtype.kind not in "fc":
        return
    n, d = int(x.shape[0]), max(1, int(x.shape[1]))
    step = max(1, _TIE_BUDGET_BYTES // (8 * d))
    for a in range(0, n, step):
        blk = _to_torch(x[a : a + step])
        if not blk.is_floating_point() or bool(torch.isfinite(blk.sum(1)).all()):
            continue
        bad = (~torch.isfinite(blk).all(1)).nonzero().flatten()
        if bad.numel():
            raise ValueError(
                f"{name} contain NaN or inf (first at row {a + int(bad[0])}); vectors must be finite"
            )


def _to_torch(x: ArrayLike) -> torch.Tensor:
    """Zero-copy view of a numpy array (read-only arrays such as memmaps are never written)."""
    if isinstance(x, torch.Tensor):
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": we only read it
        return torch.from_numpy(np.asarray(x))


def _rows(x: ArrayLike, a: int, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Rows ``[a, b)`` as a compute-dtype tensor; a view when no conversion is needed."""
    return _to_torch(x[a:b]).to(device=device, dtype=dtype)


def _take(x: ArrayLike, pos: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(pos).to(x.device)].to(device=device, dtype=dtype)
    return torch.from_numpy(np.ascontiguousarray(x[pos])).to(device=device, dtype=dtype)


def _pad_rows(x: torch.Tensor, m: int) -> torch.Tensor:
    if x.shape[0] >= m:
        return x
    return torch.cat([x, x.new_zeros((m - x.shape[0], x.shape[1]))])


class _Workspace:
    """Reusable block buffers.

    Large CPU allocations are fresh ``mmap``s, so a new 256 MB score block per GEMM pays ~0.1 s of
    page faults; reusing the buffers removes that without raising the peak (same blocks, kept).
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device
    ) -> torch.Tensor:
        numel = shape[0] * shape[1]
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype or buf.device != device:
            self._bufs.pop(name, None)  # free the old one before allocating
            buf = self._bufs[name] = torch.empty(numel, dtype=dtype, device=device)
        return buf[:numel].view(shape)


@functools.cache
def _onednn() -> bool:
    """Whether oneDNN's float32 GEMM (the one ``torch.nn.Linear`` gets on CPU under torch.compile) runs here.

    Measured on the 2-core AMD EPYC this project runs on (1,000 x 65,536 x 512): 0.21 s against 0.48 s for
    ``torch.mm`` (MKL, which takes a generic code path on non-Intel CPUs) and faiss's OpenBLAS between the
    two. Like MKL's, its rounding of an entry does not depend on the block shape once both sides have
    ``_MIN_GEMM`` rows (OpenBLAS's does), which the tie handling relies on. The op is internal to torch, so
    it is checked once against ``torch.mm`` on exact data, and any failure falls back to ``torch.mm``.
    """
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        a = torch.randint(-3, 4, (_MIN_GEMM, 24), generator=g).float()
        b = torch.randint(-3, 4, (_MIN_GEMM + 5, 24), generator=g).float()
        return bool(torch.equal(_onednn_mm(a, b), a @ b.T))  # small integers: exact in any order
    except Exception:
        return False


def _onednn_mm(q: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(q.contiguous(), c.contiguous(), None, "none", [], "")


def _gemm(q: torch.Tensor, c: torch.Tensor, ws: _Workspace | None = None) -> torch.Tensor:
    """``q @ c.T`` as float32, padded so the GEMM kernel (and its rounding) is shape-independent."""
    nq, nc = q.shape[0], c.shape[0]
    qp, cp = _pad_rows(q, _MIN_GEMM), _pad_rows(c, _MIN_GEMM)
    if q.device.type == "cpu" and q.dtype == torch.float32 and _onednn():
        s = _onednn_mm(qp, cp)
    elif ws is None:
        s = qp @ cp.T
    else:
        s = torch.mm(qp, cp.T, out=ws.get("gemm", (qp.shape[0], cp.shape[0]), q.dtype, q.device))
    if s.shape[0] != nq or s.shape[1] != nc:
        s = s[:nq, :nc]
    if s.dtype == torch.float32:
        return s
    if ws is None:
        return s.float()
    return ws.get("gemm32", (nq, nc), torch.float32, q.device).copy_(s)


_LANES = 8 * 31  # bool columns per int64 word (8) x words summed before a byte lane could overflow (31)


def _count_gt(s: torch.Tensor, thr: torch.Tensor, ws: _Workspace) -> torch.Tensor:
    """Per row: number of entries of ``s`` greater than ``thr`` (int64).

    ``(s > t).sum(1)`` converts every bool to int64 and costs ~3x the comparison itself. Here the
    bool mask is summed as int64 words (8 byte lanes of 0/1, at most 31 words per sum so no lane
    carries) and the lanes are unpacked on a tensor 248x smaller.
    """
    b, n = s.shape
    n_up = -(-n // _LANES) * _LANES
    buf = ws.get("mask", (b, n_up), torch.bool, s.device)
    buf[:, n:] = False
    torch.gt(s, thr[:, None], out=buf[:, :n])
    words = buf.view(torch.int64).view(b, 31, n_up // _LANES).sum(1)  # each byte lane <= 31
    return words.view(torch.uint8).sum(1)  # little- or big-endian: the 8 lanes are summed either way


@dataclass
class _Lists:
    """Per-query integer lists in CSR form (sorted, de-duplicated rows)."""

    ptr: np.ndarray  # (Q+1,) int64
    pos: np.ndarray  # (nnz,) int64

    @classmethod
    def build(cls, lists: Sequence[Sequence[int]] | None, nq: int, n: int, name: str) -> _Lists | None:
        if lists is None:
            return None
        if len(lists) != nq:
            raise ValueError(f"{name} must have one entry per query: got {len(lists)} for {nq} queries")
        ptr = np.zeros(nq + 1, np.int64)
        rows: list[np.ndarray] = []
        for i, items in enumerate(lists):
            arr = np.unique(np.asarray(items, dtype=np.int64).reshape(-1))
            if arr.size and (arr[0] < 0 or arr[-1] >= n):
                bad = int(arr[0] if arr[0] < 0 else arr[-1])
                raise ValueError(
                    f"{name}[{i}] (query {i}) contains index {bad}, outside the corpus range [0, {n})"
                )
            rows.append(arr)
            ptr[i + 1] = ptr[i] + arr.size
        pos = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        return cls(ptr, pos.astype(np.int64, copy=False))

    def block(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(local row, position) pairs of queries ``[a, b)``, sorted by row then position."""
        counts = np.diff(self.ptr[a : b + 1])
        return np.repeat(np.arange(b - a, dtype=np.int64), counts), self.pos[self.ptr[a] : self.ptr[b]]

    def subset(self, rows: np.ndarray) -> _Lists:
        parts = [self.pos[self.ptr[r] : self.ptr[r + 1]] for r in rows]
        ptr = np.zeros(len(rows) + 1, np.int64)
        ptr[1:] = np.cumsum([p.size for p in parts])
        return _Lists(ptr, np.concatenate(parts) if parts else np.zeros(0, np.int64))

    def max_len(self) -> int:
        return int(np.diff(self.ptr).max()) if self.ptr.size > 1 else 0


def _drop_pairs(
    rows: np.ndarray, pos: np.ndarray, ex_rows: np.ndarray, ex_pos: np.ndarray, n: int
) -> np.ndarray:
    """Mask of (rows, pos) pairs that are not in the exclusion pairs."""
    if ex_rows.size == 0 or rows.size == 0:
        return np.ones(rows.size, bool)
    return ~np.isin(rows * n + pos, ex_rows * n + ex_pos)


def _pair_scores(
    q: torch.Tensor,
    corpus: ArrayLike,
    rows: np.ndarray,
    pos: np.ndarray,
    dtype: torch.dtype,
    device: torch.device,
    col_chunk: int,
) -> torch.Tensor:
    """Scores of (query row, corpus position) pairs, computed with the same GEMM as the full search."""
    out = torch.empty(rows.size, dtype=torch.float32, device=device)
    if rows.size == 0:
        return out
    uniq, inv = np.unique(pos, return_inverse=True)
    step = max(1, min(col_chunk, _TIE_BUDGET_BYTES // (4 * max(1, q.shape[0]))))
    for a in range(0, uniq.size, step):
        b = min(uniq.size, a + step)
        vecs = _take(corpus, uniq[a:b], dtype, device)
        if not bool(torch.isfinite(vecs).all()):
            raise ValueError("corpus contain NaN or inf; vectors must be finite")
        s = _gemm(q, vecs)
        sel = np.flatnonzero((inv >= a) & (inv < b))
        r = torch.from_numpy(rows[sel]).to(device)
        c = torch.from_numpy(inv[sel] - a).to(device)
        out[torch.from_numpy(sel).to(device)] = s[r, c]
    return out


def _order_first(
    rows: np.ndarray, pos: np.ndarray, s: np.ndarray, nrows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sort pairs by (row, -score, pos); return the order and each pair's 0-based rank in its row."""
    order = np.lexsort((pos, -s.astype(np.float64), rows))
    r = rows[order]
    counts = np.bincount(r, minlength=nrows)
    starts = np.cumsum(counts) - counts
    return order, np.arange(r.size) - starts[r]


# --------------------------------------------------------------------------------------------------
# torch engine


def _row_groups(rows: torch.Tensor, n: int) -> Iterator[torch.Tensor]:
    """Split row ids so a (rows, n) copy, a mask and a worst-case ``nonzero()`` fit the budget."""
    step = max(1, _TIE_BUDGET_BYTES // (24 * max(1, n)))
    for a in range(0, rows.numel(), step):
        yield rows[a : a + step]


def _block_topk(s: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-(k+1) of a score block whose first k entries follow (score desc, position asc).

    ``topk`` picks an arbitrary subset of the items tied with its k-th value. Asking for one extra
    item detects that for free: the boundary is ambiguous iff the (k+1)-th value equals the k-th.
    Only those rows are re-resolved exactly; the extra column also serves as a count threshold.
    """
    n = s.shape[1]
    kp = min(k + 1, n)
    v, i = s.topk(kp, dim=1, largest=True, sorted=True)
    if kp > k:
        t = v[:, k - 1]
        tie = ((v[:, k] == t) & (t > _NEG_INF)).nonzero().flatten()
        for rows in _row_groups(tie, n):
            _fix_boundary_ties(s, v, i, rows, k)
    return v, i


def _fix_boundary_ties(s: torch.Tensor, v: torch.Tensor, i: torch.Tensor, rows: torch.Tensor, k: int) -> None:
    """Point the slots of ``rows`` holding the k-th value at the lowest positions holding it.

    All values above the k-th are inside the top-k already, so only the slots holding it change. The
    extra (k+1)-th slot is rewritten too when it ties, so the indices stay distinct.
    """
    vr = v[rows]
    t = vr[:, k - 1]
    g = (vr > t[:, None]).sum(1)  # slots strictly above t
    m = (vr == t[:, None]).sum(1)  # slots holding t
    nz = (s[rows] == t[:, None]).nonzero()  # row-major: positions ascending per row
    r_loc, p = nz[:, 0], nz[:, 1]
    counts = torch.bincount(r_loc, minlength=rows.numel())
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(r_loc.numel(), device=s.device) - starts[r_loc]
    keep = rank < m[r_loc]
    r_sel = r_loc[keep]
    i[rows[r_sel], g[r_sel] + rank[keep]] = p[keep]


def _torch_engine(
    queries: ArrayLike,
    corpus: ArrayLike,
    k: int,
    excl: _Lists | None,
    rel: _Lists | None,
    *,
    query_chunk: int,
    corpus_chunk: int,
    dtype: torch.dtype,
    device: torch.device,
    progress: bool,
    want_topk: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    nq, n = int(queries.shape[0]), int(corpus.shape[0])
    out_v = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    frr = np.zeros(nq, np.int64) if rel is not None else None
    c_dev: torch.Tensor | None = None
    if device.type != "cpu":  # move the gallery once (chunk by chunk) rather than once per query chunk
        c_dev = torch.empty((n, int(corpus.shape[1])), dtype=dtype, device=device)
        for c0 in range(0, n, corpus_chunk):
            c_dev[c0 : c0 + corpus_chunk] = _rows(corpus, c0, c0 + corpus_chunk, dtype, device)
    ws = _Workspace()
    with _progress(progress, nq, query_chunk) as advance:
        for a in range(0, nq, query_chunk):
            b = min(nq, a + query_chunk)
            q = _rows(queries, a, b, dtype, device)
            bq = b - a
            ex_r, ex_p = excl.block(a, b) if excl is not None else (np.zeros(0, np.int64),) * 2
            run_v = torch.full((bq, k), _NEG_INF, device=device)
            run_i = torch.full((bq, k), n, dtype=torch.int64, device=device)
            # best relevant item per query: (score, position); rows without one never count anything
            best_s = best_p = ahead = None
            rel_r = rel_p = np.zeros(0, np.int64)
            rel_s = torch.zeros(0, device=device)
            if rel is not None:
                rel_r, rel_p = rel.block(a, b)
                keep = _drop_pairs(rel_r, rel_p, ex_r, ex_p, n)
                rel_r, rel_p = rel_r[keep], rel_p[keep]
                rel_s = _pair_scores(q, corpus, rel_r, rel_p, dtype, device, corpus_chunk)
                s_np = rel_s.cpu().numpy()
                order, rank = _order_first(rel_r, rel_p, s_np, bq)
                first = order[rank == 0]
                bs = np.full(bq, np.inf, np.float32)
                bp = np.zeros(bq, np.int64)
                bs[rel_r[first]] = s_np[first]
                bp[rel_r[first]] = rel_p[first]
                best_s, best_p = torch.from_numpy(bs).to(device), torch.from_numpy(bp).to(device)
                ahead = torch.zeros(bq, dtype=torch.int64, device=device)
            for c0 in range(0, n, corpus_chunk):
                c1 = min(n, c0 + corpus_chunk)
                c = c_dev[c0:c1] if c_dev is not None else _rows(corpus, c0, c1, dtype, device)
                s = _gemm(q, c, ws)
                if rel_r.size:  # use the exact scores the ranks are based on (no-op if GEMM is consistent)
                    m = np.flatnonzero((rel_p >= c0) & (rel_p < c1))
                    if m.size:
                        s[
                            torch.from_numpy(rel_r[m]).to(device), torch.from_numpy(rel_p[m] - c0).to(device)
                        ] = rel_s[torch.from_numpy(m).to(device)]
                if ex_r.size:  # exclusions inside the block, before top-k: nothing can be lost
                    m = np.flatnonzero((ex_p >= c0) & (ex_p < c1))
                    if m.size:
                        s[torch.from_numpy(ex_r[m]).to(device), torch.from_numpy(ex_p[m] - c0).to(device)] = (
                            _NEG_INF
                        )
                v, i = _block_topk(s, k)
                if want_topk:
                    run_v, run_i = _merge_block(v, i, c0, k, run_v, run_i)
                if ahead is not None and best_s is not None and best_p is not None:
                    ahead += _count_ahead(s, v, i, c0, best_s, best_p, ws)
            if want_topk:
                run_i[run_v == _NEG_INF] = -1
                out_v[a:b] = run_v.cpu().numpy()
                out_i[a:b] = run_i.cpu().numpy()
            if frr is not None and ahead is not None and best_s is not None:
                has = torch.isfinite(best_s)
                frr[a:b] = torch.where(has, ahead + 1, torch.zeros_like(ahead)).cpu().numpy()
            advance()
    return out_v, out_i, frr


def _merge_block(
    v: torch.Tensor, i: torch.Tensor, c0: int, k: int, run_v: torch.Tensor, run_i: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge a block's top-k into the running top-k, keeping (score desc, position asc) order."""
    cv = torch.cat([run_v, v[:, :k]], 1)
    ci = torch.cat([run_i, i[:, :k] + c0], 1)
    o = ci.argsort(dim=1)  # positions ascending, then a stable sort by score descending
    cv, ci = cv.gather(1, o), ci.gather(1, o)
    cv, o = torch.sort(cv, dim=1, descending=True, stable=True)
    return cv[:, :k].contiguous(), ci.gather(1, o[:, :k])


def _count_ahead(
    s: torch.Tensor,
    v: torch.Tensor,
    i: torch.Tensor,
    c0: int,
    best_s: torch.Tensor,
    best_p: torch.Tensor,
    ws: _Workspace,
) -> torch.Tensor:
    """Per row: eligible items of the block ranked before (best_s, best_p).

    Rows whose best relevant score beats the block's (k+1)-th value are counted on the small top-k
    tensors (every item ahead is in there). The others need one pass over their block row: if the
    relevant item lies after the block, ties count too, so compare against nextafter(s, -inf)
    instead; only the (single) block containing it needs the position-aware tie count.
    """
    n, kp = s.shape[1], v.shape[1]
    bs, bp = best_s[:, None], best_p[:, None]
    cnt = ((v > bs) | ((v == bs) & (i + c0 < bp))).sum(1)
    if kp == n:
        return cnt
    far = best_s <= v[:, -1]
    if not bool(far.any()):
        return cnt
    lim = best_p - c0  # local position of the relevant item
    thr = torch.where(lim >= n, torch.nextafter(best_s, torch.full_like(best_s, _NEG_INF)), best_s)
    if 2 * int(far.sum()) > s.shape[0]:  # most rows: one pass over the whole block, no copies
        full = _count_gt(s, torch.where(far, thr, torch.full_like(thr, float("inf"))), ws)
        cnt = torch.where(far, full, cnt)
    else:
        for rows in _row_groups(far.nonzero().flatten(), n):
            cnt[rows] = _count_gt(s[rows], thr[rows], ws)
    # the block holding the relevant item: ties before it count too. That is one row per query
    # over the whole search, so per-row slices (numpy: no thread wake-ups per tiny op) are cheaper
    # than another pass over the block.
    inside = (far & (lim > 0) & (lim < n)).nonzero().flatten()
    if inside.numel() == 0:
        return cnt
    if s.device.type == "cpu" and _PER_ROW_TIES_ON_CPU:
        s_np, lims, targets = s.numpy(), lim.tolist(), best_s.tolist()
        extra = torch.tensor(
            [int(np.count_nonzero(s_np[r, : lims[r]] == targets[r])) for r in inside.tolist()]
        )
        cnt[inside] += extra
        return cnt
    cols = torch.arange(n, device=s.device)[None, :]
    for rows_t in _row_groups(inside, n):
        eq = (s[rows_t] == best_s[rows_t][:, None]) & (cols < lim[rows_t][:, None])
        cnt.index_add_(0, rows_t, eq.sum(1))
    return cnt


@contextlib.contextmanager
def _progress(enabled: bool, nq: int, chunk: int) -> Iterator[Callable[[], None]]:
    """Advance-callback over query chunks, drawn with the project's rich progress bar."""
    from cirbench.core.progress import progress_bar

    with progress_bar(enabled) as bar:
        task = bar.add_task("exact search", total=max(1, math.ceil(nq / chunk)))
        yield lambda: bar.advance(task)


# --------------------------------------------------------------------------------------------------
# faiss engine


def _faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _as_f32_numpy(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=np.float32)


def _faiss_engine(
    queries: ArrayLike,
    corpus: ArrayLike,
    k: int,
    excl: _Lists | None,
    *,
    query_chunk: int,
    corpus_chunk: int,
    progress: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """faiss exhaustive inner-product search, re-ordered deterministically.

    Uses ``faiss.knn`` (the kernel behind ``IndexFlatIP.search``) so the gallery is not copied into an
    index. faiss breaks ties arbitrarily and cannot say whether more items share the k-th score, so
    rows whose last retrieved score equals the k-th kept score are recomputed by the torch engine.
    """
    import faiss

    nq, n = int(queries.shape[0]), int(corpus.shape[0])
    xb = _as_f32_numpy(corpus)  # no copy for C-contiguous float32 numpy / CPU tensors
    extra = excl.max_len() if excl is not None else 0
    # one more than can be kept: the (k+1)-th kept score says whether the k-th is shared beyond them
    kp = min(n, k + extra + 1)
    out_v = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    redo: list[np.ndarray] = []
    with _progress(progress, nq, query_chunk) as advance:
        for a in range(0, nq, query_chunk):
            b = min(nq, a + query_chunk)
            xq = _as_f32_numpy(queries[a:b])
            if xq.shape[0] < _MIN_GEMM:  # keep faiss on its BLAS path (its rounding differs below 20)
                xq = np.concatenate([xq, np.zeros((_MIN_GEMM - xq.shape[0], xq.shape[1]), np.float32)])
            dist, ids = faiss.knn(xq, xb, kp, metric=faiss.METRIC_INNER_PRODUCT)
            dist, ids = dist[: b - a].astype(np.float32), ids[: b - a].astype(np.int64)
            bq = b - a
            if excl is None and bool((ids >= 0).all()) and not bool((dist[:, 1:] == dist[:, :-1]).any()):
                # no exclusions and no tie among the fetched: faiss's order (score desc) is the order
                out_v[a:b, : min(k, kp)], out_i[a:b, : min(k, kp)] = dist[:, :k], ids[:, :k]
                advance()
                continue  # and the (k+1)-th fetched score differs from the k-th: nothing to redo
            rows = np.repeat(np.arange(bq, dtype=np.int64), kp)
            pos, sc = ids.reshape(-1), dist.reshape(-1)
            valid = pos >= 0
            if excl is not None:
                ex_r, ex_p = excl.block(a, b)
                valid &= _drop_pairs(rows, np.where(valid, pos, 0), ex_r, ex_p, n)
            rows, pos, sc = rows[valid], pos[valid], sc[valid]
            order, rank = _order_first(rows, pos, sc, bq)
            keep = order[rank < k]
            rk = rank[rank < k]
            out_v[a + rows[keep], rk] = sc[keep]
            out_i[a + rows[keep], rk] = pos[keep]
            if kp < n:  # unretrieved items exist: is the k-th kept score shared with one of them?
                kth = out_v[a:b, k - 1]
                ambiguous = (ids[:, -1] >= 0) & (dist[:, -1] == kth)
                redo.append(a + np.flatnonzero(ambiguous))
            advance()
    rows_redo = np.concatenate(redo) if redo else np.zeros(0, np.int64)
    if rows_redo.size:
        sub_q = (
            queries[rows_redo] if isinstance(queries, np.ndarray) else queries[torch.from_numpy(rows_redo)]
        )
        v, i, _ = _torch_engine(
            sub_q,
            corpus,
            k,
            excl.subset(rows_redo) if excl is not None else None,
            None,
            query_chunk=query_chunk,
            corpus_chunk=corpus_chunk,
            dtype=torch.float32,
            device=torch.device("cpu"),
            progress=False,
        )
        out_v[rows_redo], out_i[rows_redo] = v, i
    return out_v, out_i


# --------------------------------------------------------------------------------------------------
# public API


@torch.inference_mode()
def exact_search(
    queries: ArrayLike,
    corpus: ArrayLike,
    k: int,
    *,
    exclude: Sequence[Sequence[int]] | None = None,
    relevant: Sequence[Sequence[int]] | None = None,
    query_chunk: int = 1024,
    corpus_chunk: int = 65536,
    dtype: str = "float32",
    device: str = "cpu",
    backend: str = "torch",
    progress: bool = False,
) -> SearchResult:
    """Exact top-``k`` by inner product, ordered by (score desc, corpus position asc).

    ``exclude[i]`` are never returned for query ``i`` (e.g. its reference image) and do not count in
    ``first_relevant_rank``; ``relevant[i]`` are the ground-truth targets for the rank. Inputs are
    taken as-is (L2-normalise them for cosine similarity). ``dtype="bfloat16"`` runs the GEMM in
    bf16 (faster on CPUs with AVX512-BF16/AMX, coarser scores -> more ties, still ordered
    deterministically). ``backend="auto"`` uses faiss for float32 on CPU when it is installed and no
    ``relevant`` is given (the ranks need a full torch pass anyway, which then also yields top-k).
    """
    nq, n, _ = _check_inputs(queries, corpus, k)
    k = int(k)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if query_chunk < 1 or corpus_chunk < 1:
        raise ValueError(
            f"chunk sizes must be >= 1, got query_chunk={query_chunk}, corpus_chunk={corpus_chunk}"
        )
    dev = torch.device(device)
    excl = _Lists.build(exclude, nq, n, "exclude")
    rel = _Lists.build(relevant, nq, n, "relevant")
    _check_finite(queries, "queries")
    _check_finite(corpus, "corpus")
    if backend == "auto":
        cpu_f32 = dtype == "float32" and dev.type == "cpu"
        backend = "faiss" if cpu_f32 and rel is None and _faiss_available() else "torch"
    if backend == "faiss":
        if dtype != "float32" or dev.type != "cpu":
            raise ValueError(
                f"backend='faiss' supports dtype='float32' on cpu only (got {dtype!r} on {device!r})"
            )
        if not _faiss_available():
            raise ImportError("backend='faiss' needs faiss: pip install 'cirbench[faiss]'")
        v, i = _faiss_engine(
            queries, corpus, k, excl, query_chunk=query_chunk, corpus_chunk=corpus_chunk, progress=progress
        )
        frr = None
        if rel is not None:  # faiss cannot count beyond its top-k: one counting-only torch pass
            _, _, frr = _torch_engine(
                queries,
                corpus,
                k,
                excl,
                rel,
                query_chunk=query_chunk,
                corpus_chunk=corpus_chunk,
                dtype=torch.float32,
                device=dev,
                progress=False,
                want_topk=False,
            )
        return SearchResult(i, v, frr)
    v, i, frr = _torch_engine(
        queries,
        corpus,
        k,
        excl,
        rel,
        query_chunk=query_chunk,
        corpus_chunk=corpus_chunk,
        dtype=_DTYPES[dtype],
        device=dev,
        progress=progress,
    )
    return SearchResult(i, v, frr)


@torch.inference_mode()
def subset_search(
    queries: ArrayLike,
    corpus: ArrayLike,
    candidates: Sequence[Sequence[int]],
    k: int,
    *,
    exclude: Sequence[Sequence[int]] | None = None,
) -> SearchResult:
    """Ranking restricted to each query's candidate subset (CIRR's img_set) minus exclusions.

    Rows are -1 padded (e.g. 5 candidates minus the reference -> 4 ranked items, K=3 -> 3 shown).

    Scores come from the same padded float32 GEMM as :func:`exact_search`, so a subset ranking agrees
    with the full ranking restricted to the subset.
    """
    nq, n, _ = _check_inputs(queries, corpus, k)
    k = int(k)
    cand = _Lists.build(candidates, nq, n, "candidates")
    excl = _Lists.build(exclude, nq, n, "exclude")
    assert cand is not None
    _check_finite(queries, "queries")
    out_v = np.full((nq, k), -np.inf, np.float32)
    out_i = np.full((nq, k), -1, np.int64)
    dev, f32 = torch.device("cpu"), torch.float32
    step = 1024
    for a in range(0, nq, step):
        b = min(nq, a + step)
        rows, pos = cand.block(a, b)
        if excl is not None:
            ex_r, ex_p = excl.block(a, b)
            keep = _drop_pairs(rows, pos, ex_r, ex_p, n)
            rows, pos = rows[keep], pos[keep]
        if rows.size == 0:
            continue
        q = _rows(queries, a, b, f32, dev)
        s = _pair_scores(q, corpus, rows, pos, f32, dev, 65536).numpy()
        order, rank = _order_first(rows, pos, s, b - a)
        sel = order[rank < k]
        out_v[a + rows[sel], rank[rank < k]] = s[sel]
        out_i[a + rows[sel], rank[rank < k]] = pos[sel]
    return SearchResult(out_i, out_v, None)
