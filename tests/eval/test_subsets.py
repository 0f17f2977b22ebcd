"""Labelled subsets: class-balanced, a function of (labels, fraction, seed) only, nested; split files."""
import numpy as np
import pytest

from twist.data import DatasetError, DigitsSource
from twist.data.datasets import FileListSource
from twist.eval.subsets import SubsetSource, class_balanced_subset, source_labels, subset_from_file


def _labels(seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 7, size=900)


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5, 1.0])
def test_each_class_gets_its_share(fraction):
    labels = _labels()
    subset = class_balanced_subset(labels, fraction, seed=3)
    assert len(np.unique(subset)) == len(subset) and np.all(np.diff(subset) > 0)
    for cls in np.unique(labels):
        size = int((labels == cls).sum())
        assert int((labels[subset] == cls).sum()) == max(1, round(fraction * size))


def test_same_seed_same_subset_other_seed_another_and_fractions_nest():
    labels = _labels()
    a, b = class_balanced_subset(labels, 0.1, seed=5), class_balanced_subset(labels.copy(), 0.1, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, class_balanced_subset(labels, 0.1, seed=6))
    small, large = class_balanced_subset(labels, 0.05, seed=5), class_balanced_subset(labels, 0.2, seed=5)
    assert set(small) <= set(a) <= set(large)


def test_digits_ten_percent_is_balanced_over_the_ten_digits():
    source = DigitsSource("train")
    labels = source_labels(source)
    subset = SubsetSource(source, class_balanced_subset(labels, 0.1, seed=0))
    counts = np.bincount(source_labels(subset), minlength=10)
    assert counts.min() >= 14 and counts.max() <= 15 and counts.sum() == len(subset)
    image, label = subset.load(0)
    assert label == labels[subset.indices[0]] and image.size == (8, 8)


def test_split_file_selects_by_file_name_and_names_what_is_missing(tmp_path):
    (tmp_path / "imgs").mkdir()
    for i in range(4):
        (tmp_path / "imgs" / f"n0000_{i}.png").write_bytes(b"")
    (tmp_path / "list.txt").write_text("".join(f"imgs/n0000_{i}.png {i % 2}\n" for i in range(4)))
    source = FileListSource(str(tmp_path), "list.txt")
    (tmp_path / "1percent.txt").write_text("n0000_3.png\nn0000_1.png\n")
    np.testing.assert_array_equal(subset_from_file(source, str(tmp_path / "1percent.txt")), [1, 3])
    (tmp_path / "bad.txt").write_text("n0000_3.png\nn9999_1.png\n")
    with pytest.raises(DatasetError, match=r"1 of 2 names are not images of the train split, e.g. \['n9999_1.png'\]"):
        subset_from_file(source, str(tmp_path / "bad.txt"))
    with pytest.raises(DatasetError, match="needs an image folder or a file list"):
        subset_from_file(DigitsSource("train"), str(tmp_path / "1percent.txt"))
