"""A built dataset's Hugging Face data card: the README's YAML metadata, derived from its manifest, checked.

The Hub wants a licence id it knows, task categories, a size category and one config per table with its
splits. `hub_card` completes a builder's card from the dataset's manifest and refuses metadata the Hub would
reject, before anything is written (`cirbench.core.dataset.write_dataset`) or uploaded (`cirbench.hub`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cirbench.core.paths import Root
from cirbench.core.types import DatasetError

if TYPE_CHECKING:
    from huggingface_hub import DatasetCard, DatasetCardData

_HUB_LICENSES = {
    "mit": "mit",
    "apache-2.0": "apache-2.0",
    "apache 2.0": "apache-2.0",
    "cc by-nc 4.0": "cc-by-nc-4.0",
    "cc-by-nc-4.0": "cc-by-nc-4.0",
    "cc by 4.0": "cc-by-4.0",
    "cc-by-4.0": "cc-by-4.0",
    "cc by-sa 4.0": "cc-by-sa-4.0",
    "cdla": "cdla-permissive-1.0",
}


def hub_license(text: str) -> str:
    """The hub's licence id for a free-text licence (its first clause), else "other"."""
    low = text.lower().strip()
    for key, hub_id in _HUB_LICENSES.items():
        if low.startswith(key):
            return hub_id
    return "other"


def size_category(n: int) -> str:
    for bound, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < bound:
            return label
    return "1M<n<10M"


HUB_LICENSES = frozenset({
    "apache-2.0", "mit", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-4.0", "cc0-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "cdla-sharing-1.0", "odc-by",
    "odbl", "pddl", "bsd-3-clause", "openrail", "other", "unknown",
})
"""Licence ids of the Hub that cirbench's datasets use (`hub_license` maps free text onto them)."""
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


def card_data(manifest: Mapping[str, Any], front: Mapping[str, Any] | None = None) -> DatasetCardData:
    """The card metadata of a dataset from its manifest (cirbench.json): the builder's front matter
    (`front`), completed and normalised: licence id, task categories, tags, size category, configs per
    table."""
    from huggingface_hub import DatasetCardData

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
            path = Root(root).join(str(f.get("path")), file=where, record=config["config_name"],
                                   field="configs")
            if not path.is_file():
                raise DatasetError(f"data file {f.get('path')!r} does not exist", file=where,
                                   record=config["config_name"], field="configs")


def hub_card(root: Path, manifest: Mapping[str, Any], text: str) -> DatasetCard:
    """The card `text` of the dataset at `root` with its metadata completed from `manifest` and checked
    (DatasetError naming the field otherwise); the prose is kept as it is."""
    from huggingface_hub import DatasetCard

    if not text.startswith("---"):
        text = "---\n{}\n---\n" + text  # no front matter yet: an empty one, completed below
    card = DatasetCard(text)
    card.data = card_data(manifest, card.data.to_dict())
    check_card_data(card.data, root)
    return card
