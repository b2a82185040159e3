"""What a refused request must leave untouched: the files under a folder, and a hospital file outside the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def file_tree(root: Path) -> list[Path]:
    """Every file and folder under ``root``, relative to it, sorted: compare before and after a refusal."""
    return sorted(p.relative_to(root) for p in root.rglob("*"))


def plant_hospital_file(root: Path) -> Path:
    """``root/hospital-files/x.npz``, a file of the hospital's that no coordinator's name may reach
    (``../../../hospital-files/x`` from a site's cache)."""
    folder = root / "hospital-files"
    folder.mkdir()
    np.savez(folder / "x.npz", images=np.zeros(1))
    return folder / "x.npz"
