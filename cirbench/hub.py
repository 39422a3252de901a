"""Built datasets on the Hugging Face Hub: the data card as a checked `DatasetCard`, and `cirbench push`.

A built dataset is already what the Hub wants: parquet tables whose `image` column is the `datasets` Image()
feature (see `cirbench.core.dataset`), so the viewer shows pictures. What the Hub also needs is the README's
YAML metadata: a licence id it knows, task categories, a size category and one config per table with its
splits.
`dataset_card` derives those from the dataset itself (the builder's prose is kept) and checks them before
anything is written or uploaded; `push` uploads the folder as one commit (all or nothing on the Hub's side).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cirbench.core.types import DatasetError

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd, DatasetCard, DatasetCardData

HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-4.0", "cc0-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "cdla-sharing-1.0", "odc-by",
    "odbl", "pddl", "bsd-3-clause", "openrail", "other", "unknown",
})
"""Licence ids of the Hub that cirbench's datasets use (`cards.hub_license` maps free text onto them)."""
TASK_CATEGORIES = frozenset({
    "image-to-image", "text-to-image", "image-to-text", "image-feature-extraction", "image-text-to-text",
    "visual-document-retrieval", "text-retrieval", "video-text-to-text", "zero-shot-image-classification",
})
"""Hub task categories that fit a CIR dataset (a query image + text, a gallery of images)."""
SIZE_CATEGORIES = ("n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B")
SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")
"""The Hub's rule for split names."""
TABLES = ("queries", "corpus", "references")
TAGS = ("composed-image-retrieval", "cirbench")


def card_data(root: str | os.PathLike[str], front: Mapping[str, Any] | None = None) -> DatasetCardData:
    """The card metadata of the dataset at `root`: the builder's front matter (`front`), completed and
    normalised from the manifest: licence id, task categories, tags, size category, configs per table."""
    from huggingface_hub import DatasetCardData

    from cirbench.cards import hub_license, size_category
    from cirbench.core.dataset import read_manifest

    root = Path(root)
    manifest = read_manifest(root)
    meta = dict(front or {})
    licence = str(meta.get("license") or manifest.get("license") or "unknown")
    meta["license"] = licence if licence in HUB_LICENSES else hub_license(licence)
    meta["pretty_name"] = meta.get("pretty_name") or manifest.get("name")
    meta["task_categories"] = list(meta.get("task_categories") or ["image-to-image"])
    meta["tags"] = list(dict.fromkeys([*(meta.get("tags") or []), *TAGS]))
    n_queries = sum(int(s.get("num_queries", 0)) for s in manifest["splits"].values())
    meta["size_categories"] = [size_category(n_queries)]
    configs = []
    for table in TABLES:
        files = [{"split": split, "path": entry[table]} for split, entry in manifest["splits"].items()
                 if table in entry]
        if files:
            configs.append({"config_name": table, "data_files": files})
    meta["configs"] = configs
    return DatasetCardData(**meta)


def check_card_data(data: DatasetCardData, root: str | os.PathLike[str]) -> None:
    """Refuse metadata the Hub would reject or mis-show, naming the field (raises DatasetError)."""
    root = Path(root)
    where = root / "README.md"
    d = data.to_dict()
    if d.get("license") not in HUB_LICENSES:
        raise DatasetError(f"licence {d.get('license')!r} is not a Hub licence id; one of "
                           f"{sorted(HUB_LICENSES)}", file=where, field="license")
    if not d.get("pretty_name"):
        raise DatasetError("pretty_name is empty", file=where, field="pretty_name")
    for cat in d.get("task_categories") or []:
        if cat not in TASK_CATEGORIES:
            raise DatasetError(f"unknown task category {cat!r}; one of {sorted(TASK_CATEGORIES)}", file=where,
                               field="task_categories")
    for size in d.get("size_categories") or []:
        if size not in SIZE_CATEGORIES:
            raise DatasetError(f"unknown size category {size!r}", file=where, field="size_categories")
    names = [c.get("config_name") for c in d.get("configs") or []]
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"configs must be present and uniquely named, got {names}", file=where,
                           field="configs")
    for config in d["configs"]:
        for f in config.get("data_files") or []:
            if not SPLIT_NAME.match(str(f.get("split"))):
                raise DatasetError(f"split name {f.get('split')!r} is not allowed on the Hub", file=where,
                                   record=config["config_name"], field="configs")
            from cirbench.core.dataset import safe_path

            path = safe_path(root, str(f.get("path")), file=where, record=config["config_name"],
                             field_name="configs")
            if not path.is_file():
                raise DatasetError(f"data file {f.get('path')!r} does not exist", file=where,
                                   record=config["config_name"], field="configs")


def dataset_card(root: str | os.PathLike[str], text: str | None = None) -> DatasetCard:
    """The dataset's card (`text`, else its README.md, else a short one from the manifest) with checked
    metadata; the prose is kept as it is."""
    from huggingface_hub import DatasetCard

    from cirbench.core.dataset import read_manifest

    root = Path(root)
    if text is None:
        readme = root / "README.md"
        if readme.is_file():
            text = readme.read_text(encoding="utf-8")
        else:
            m = read_manifest(root)
            text = f"# {m.get('name')}\n\n{m.get('description', '')}\n\nBuilt by cirbench.\n"
    if not text.startswith("---"):
        text = "---\n{}\n---\n" + text  # no front matter yet: an empty one, completed below
    card = DatasetCard(text)
    card.data = card_data(root, card.data.to_dict())
    check_card_data(card.data, root)
    return card


@dataclass
class PushPlan:
    """What `push` uploads: every file of the dataset (README.md replaced by the checked card)."""

    repo_id: str
    operations: list[CommitOperationAdd]
    card: DatasetCard
    warnings: list[str] = field(default_factory=list)
    commit_url: str | None = None

    @property
    def paths(self) -> list[str]:
        return [op.path_in_repo for op in self.operations]


def prepare_push(root: str | os.PathLike[str], repo_id: str) -> PushPlan:
    """The upload of the dataset at `root` as commit operations, checked before any network call."""
    import pyarrow.parquet as pq
    from huggingface_hub import CommitOperationAdd

    from cirbench.core.dataset import load_native, read_manifest

    root = Path(root)
    manifest = read_manifest(root)
    for split in manifest["splits"]:  # refuse to publish what cirbench itself cannot read back
        load_native(root, split)
    card = dataset_card(root)
    warnings = []
    if int(manifest.get("format_version", 0)) < 2:
        warnings.append("format_version 1: its image column is plain bytes, so the Hub viewer shows no "
                        "pictures; rebuild the dataset with this cirbench")
    for split, entry in manifest["splits"].items():
        for table in ("corpus", "references"):
            if table in entry:
                t = pq.read_table(root / entry[table], columns=["image", "image_path"])
                n_files = sum(1 for img, rel in zip(t.column("image").to_pylist(),
                                                    t.column("image_path").to_pylist())
                              if img is None and rel is not None)
                if n_files:
                    warnings.append(f"{split}/{table}: {n_files} image(s) are files in the dataset folder, "
                                    "not bytes in the parquet: they are uploaded, but the viewer shows "
                                    "pictures only for inline images (build with export.images: parquet)")
    ops = [CommitOperationAdd("README.md", str(card).encode("utf-8"))]
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == "README.md":
            continue  # hidden files (temporary, editor, git) never go up
        if path.is_symlink():
            warnings.append(f"{rel.as_posix()}: a symbolic link, not uploaded")
            continue
        if path.is_file():
            ops.append(CommitOperationAdd(rel.as_posix(), str(path)))
    return PushPlan(repo_id=repo_id, operations=ops, card=card, warnings=warnings)


def push(root: str | os.PathLike[str], repo_id: str, *, token: str | None = None, private: bool = False,
         revision: str | None = None, endpoint: str | None = None, commit_message: str | None = None,
         dry_run: bool = False) -> PushPlan:
    """Create the dataset repo if needed and upload the dataset as one commit; returns what was uploaded.

    Network or permission problems raise ValueError with the Hub's message (no traceback for the CLI)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    from cirbench.core.dataset import read_manifest

    plan = prepare_push(root, repo_id)
    if dry_run:
        return plan
    m = read_manifest(root)
    message = commit_message or (f"cirbench push: {m.get('name')} {m.get('version', '')} "
                                 f"(dataset revision {m.get('revision')})").replace("  ", " ")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private or None, exist_ok=True)
        info = api.create_commit(repo_id, operations=plan.operations, commit_message=message,
                                 repo_type="dataset", revision=revision)
    except OfflineModeIsEnabled as e:
        raise ValueError(f"cannot push {repo_id}: HF_HUB_OFFLINE is set; unset it to upload") from e
    except HfHubHTTPError as e:
        raise ValueError(f"the Hub refused the upload of {repo_id}: {e}") from e
    plan.commit_url = info.commit_url
    return plan
