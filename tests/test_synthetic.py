"""The synthetic stand-in data: seeded, labelled synthetic, opacities where the masks say."""

from __future__ import annotations

import numpy as np
import pytest

from cxr_core.data.folders import scan
from cxr_core.data.sources import resolve_data
from cxr_core.data.synthetic import is_synthetic, make_synthetic_dataset, radiograph
from cxr_core.errors import UserError


def test_same_seed_same_images_and_another_seed_differs():
    a, mask_a = radiograph(np.random.default_rng(5), 64, pneumonia=True)
    b, mask_b = radiograph(np.random.default_rng(5), 64, pneumonia=True)
    c, _ = radiograph(np.random.default_rng(6), 64, pneumonia=True)
    assert np.array_equal(a, b) and np.array_equal(mask_a, mask_b)
    assert not np.array_equal(a, c)


def test_pneumonia_masks_mark_brighter_lung_opacities():
    normal, empty = radiograph(np.random.default_rng(1), 96, pneumonia=False)
    assert normal.dtype == np.uint8 and normal.shape == (96, 96)
    assert not empty.any()
    brighter = []
    for seed in range(8):
        # The same seed draws the same anatomy first, then the opacities on top.
        sick, mask = radiograph(np.random.default_rng(seed), 96, pneumonia=True)
        healthy, _ = radiograph(np.random.default_rng(seed), 96, pneumonia=False)
        assert mask.any()
        brighter.append(sick[mask].mean() - healthy[mask].mean())
    assert np.mean(brighter) > 10


def test_dataset_is_kaggle_layout_grouped_by_patient_and_marked(tmp_path):
    root = make_synthetic_dataset(tmp_path / "s", per_class=6, size=48, seed=2)
    assert is_synthetic(root)
    index = scan(root)
    train = index.samples["train"]
    assert sorted(s.label for s in train) == [0] * 6 + [1] * 6
    assert all(s.patient.startswith("S") for s in train)
    # Each patient holds one class only, so a patient-grouped split is also class-clean.
    by_patient: dict[str, set[int]] = {}
    for s in train:
        by_patient.setdefault(s.patient, set()).add(s.label)
    assert all(len(labels) == 1 for labels in by_patient.values())
    assert len(index.samples["val"]) == 16


def test_resolve_data_spec(tmp_path):
    assert resolve_data(str(tmp_path)) == tmp_path
    made = resolve_data("synthetic:3")
    assert is_synthetic(made) and resolve_data("synthetic:3") == made
    with pytest.raises(UserError, match="synthetic:N"):
        resolve_data("synthetic:lots")
