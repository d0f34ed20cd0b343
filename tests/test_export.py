"""The export CLI's refusals. Export of every family's trained, EMA and LoRA checkpoints into
diffusers' network and pipeline classes: test_families.py."""

import pytest

from fastvideo_grpo.export import export


def test_export_of_a_folder_that_is_no_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        export(tmp_path, tmp_path / "out")
