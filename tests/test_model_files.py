"""Model weights are written whole or not at all, and a full disk is an error naming the file and the remedy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from shared.errors import OutputWriteError
from shared.model_files import save_state_file


def test_a_model_is_written_under_its_name_with_nothing_left_beside_it(tmp_path: Path) -> None:
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    save_state_file(tmp_path / "m.pt", state)
    assert torch.equal(torch.load(tmp_path / "m.pt")["w"], state["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), a device that is always full")
def test_a_full_disk_names_the_file_and_what_to_do_and_leaves_no_half_model(tmp_path: Path) -> None:
    # the temporary file points at /dev/full, so torch's write meets a real ENOSPC, as on a full disk
    (tmp_path / "m.pt.tmp").symlink_to("/dev/full")
    (tmp_path / "m.pt").write_bytes(b"the previous model")
    with pytest.raises(OutputWriteError) as err:
        save_state_file(tmp_path / "m.pt", {"w": torch.zeros(1000, 1000)})
    text = str(err.value)
    assert f"cannot write model file {tmp_path / 'm.pt'}" in text
    assert "GB free there" in text and "Free disk space" in text and "out-dir" in text
    assert not (tmp_path / "m.pt.tmp").exists() and not (tmp_path / "m.pt.tmp").is_symlink()
    assert (tmp_path / "m.pt").read_bytes() == b"the previous model"  # never replaced by a partial file
