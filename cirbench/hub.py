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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cirbench.core.datacard import hub_card

if TYPE_CHECKING:
    from huggingface_hub import CommitOperationAdd, DatasetCard

def dataset_card(root: str | os.PathLike[str], text: str | None = None) -> DatasetCard:
    """The dataset's card (`text`, else its README.md, else a short one from the manifest) with checked
    metadata (`cirbench.core.datacard.hub_card`); the prose is kept as it is."""
    from cirbench.core.dataset import read_manifest

    root = Path(root)
    manifest = read_manifest(root)
    if text is None:
        readme = root / "README.md"
        if readme.is_file():
            text = readme.read_text(encoding="utf-8")
        else:
            text = f"# {manifest.get('name')}\n\n{manifest.get('description', '')}\n\nBuilt by cirbench.\n"
    return hub_card(root, manifest, text)


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
