import os

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from tests.parts import train_transform
from twist.config import load_config
from twist.data import CorruptImageError, DatasetError, SourceConfig, ViewsDataset, build_source, collate_views
from twist.data.datasets import FileListSource, LMDBSource, encode_lmdb_record, lmdb_record_key
from twist_tools.build_lmdb import build_lmdb


def _folder(root, classes=("cat", "dog"), per_class=3, size=12):
    rng = np.random.default_rng(0)
    pixels = {}
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            array = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(array).save(root / cls / f"{i}.png")
            pixels[(cls, i)] = array
    return pixels


def test_lmdb_round_trip_reads_length_and_classes_from_the_database(tmp_path):
    # A parent folder named 'train' must not confuse the val split (the reference guessed from the path).
    data = tmp_path / "train_runs" / "data"
    pixels = _folder(tmp_path / "src")
    assert build_lmdb(str(tmp_path / "src"), str(data / "val.lmdb")) == 6
    assert not os.path.exists(str(data / "val.lmdb") + ".partial")
    cfg = load_config(None, ["data.dataset=lmdb", f"data.path={data}"])
    source = build_source(SourceConfig.from_config(cfg), "val")
    assert isinstance(source, LMDBSource) and len(source) == 6 and source.classes == ["cat", "dog"]
    for index, (cls, i) in enumerate(sorted(pixels)):
        img, label = source.load(index)
        assert label == ["cat", "dog"].index(cls)
        np.testing.assert_array_equal(np.asarray(img), pixels[(cls, i)])


def test_lmdb_reads_in_data_loader_workers(tmp_path):
    _folder(tmp_path / "src")
    build_lmdb(str(tmp_path / "src"), str(tmp_path / "train.lmdb"))
    cfg = load_config(None, ["data.dataset=lmdb", f"data.path={tmp_path}", "data.image_size=8",
                             "augment.pipeline=barlow"])
    dataset = ViewsDataset(build_source(SourceConfig.from_config(cfg)), train_transform(cfg), seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, sampler=[(0, i) for i in range(6)],
                                         num_workers=2, collate_fn=collate_views)
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == 6


def test_corrupt_lmdb_record_names_the_record_or_is_skipped(tmp_path):
    _folder(tmp_path / "src")
    path = str(tmp_path / "train.lmdb")
    build_lmdb(str(tmp_path / "src"), path)
    env = lmdb.open(path, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(lmdb_record_key(4), encode_lmdb_record(b"not an image", 1))
        txn.delete(lmdb_record_key(5))
    env.close()
    source = LMDBSource(path)
    with pytest.raises(CorruptImageError, match=r"record 4 of LMDB .*train\.lmdb"):
        source.load(4)
    with pytest.raises(CorruptImageError, match="record 5 .* missing"):
        source.load(5)
    cfg = load_config(None, ["data.dataset=synthetic", "data.image_size=8", "augment.pipeline=barlow"])
    dataset = ViewsDataset(source, train_transform(cfg), seed=0, skip_corrupt=True)
    views, labels, indices, skipped = collate_views([dataset[(0, i)] for i in range(6)])
    assert [s.location for s in skipped] == [f"record {i} of LMDB '{path}'" for i in (4, 5)]
    assert indices.tolist() == [0, 1, 2, 3]


def test_lmdb_without_length_entry_is_refused(tmp_path):
    path = str(tmp_path / "bad.lmdb")
    env = lmdb.open(path, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"0000000000", b"x")
    env.close()
    with pytest.raises(DatasetError, match="bad.lmdb.*__len__"):
        LMDBSource(path)
    with pytest.raises(DatasetError, match="does not exist"):
        LMDBSource(str(tmp_path / "missing.lmdb"))


def test_build_lmdb_refuses_to_overwrite(tmp_path):
    _folder(tmp_path / "src")
    build_lmdb(str(tmp_path / "src"), str(tmp_path / "out.lmdb"))
    with pytest.raises(FileExistsError, match="out.lmdb"):
        build_lmdb(str(tmp_path / "src"), str(tmp_path / "out.lmdb"))


def test_file_list_round_trip_and_errors(tmp_path):
    pixels = _folder(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("# path label\nimgs/cat/0.png 0\nimgs/dog/2.png 1\n\nimgs/cat/1.png 0\n")
    cfg = load_config(None, ["data.dataset=filelist", f"data.path={tmp_path}", "data.list_file=list.txt"])
    source = build_source(SourceConfig.from_config(cfg))
    assert isinstance(source, FileListSource) and len(source) == 3
    img, label = source.load(1)
    assert label == 1
    np.testing.assert_array_equal(np.asarray(img), pixels[("dog", 2)])

    (tmp_path / "bad.txt").write_text("imgs/cat/0.png 0\nimgs/cat/1.png\n")
    with pytest.raises(DatasetError, match=r"bad.txt, line 2: expected '<path> <integer label>'"):
        FileListSource(str(tmp_path), "bad.txt")
    (tmp_path / "gone.txt").write_text("imgs/cat/9.png 0\n")
    with pytest.raises(CorruptImageError, match=r"imgs/cat/9.png"):
        FileListSource(str(tmp_path), "gone.txt").load(0)
    with pytest.raises(DatasetError, match="nowhere.txt"):
        FileListSource(str(tmp_path), "nowhere.txt")


def test_a_file_list_of_bare_paths_is_unlabelled(tmp_path):
    _folder(tmp_path / "imgs")
    (tmp_path / "list.txt").write_text("imgs/cat/0.png\nimgs/dog/2.png\n")
    source = FileListSource(str(tmp_path), "list.txt")
    assert not source.labelled and source.classes == [] and source.load(1)[1] == -1
    (tmp_path / "neg.txt").write_text("imgs/cat/0.png -3\n")
    with pytest.raises(DatasetError, match=r"neg.txt, line 1: labels must be integers >= 0, got '-3'"):
        FileListSource(str(tmp_path), "neg.txt")
    (tmp_path / "mixed.txt").write_text("imgs/cat/0.png\nimgs/cat/1.png 0\n")
    with pytest.raises(DatasetError, match=r"mixed.txt, line 2: expected '<path>' alone like the lines before it"):
        FileListSource(str(tmp_path), "mixed.txt")


def test_the_val_split_of_a_file_list_is_its_own_list(tmp_path):
    _folder(tmp_path / "imgs")
    (tmp_path / "train.txt").write_text("imgs/cat/0.png 0\n")
    (tmp_path / "val.txt").write_text("imgs/dog/2.png 1\nimgs/cat/1.png 0\n")
    cfg = load_config(None, ["data.dataset=filelist", f"data.path={tmp_path}", "data.list_file=train.txt"])
    assert len(build_source(SourceConfig.from_config(cfg), "train")) == 1
    with pytest.raises(DatasetError, match="has no 'val' split: set data.val_list_file"):
        build_source(SourceConfig.from_config(cfg), "val")
    cfg["data"]["val_list_file"] = "val.txt"
    assert len(build_source(SourceConfig.from_config(cfg), "val")) == 2
