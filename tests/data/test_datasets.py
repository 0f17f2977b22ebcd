"""Image sources, corrupt-image handling, seeded views and the two-view transforms."""
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.parts import train_transform
from twist.config import load_config
from twist.data import (
    CorruptImageError,
    DatasetError,
    DigitsSource,
    EpochSampler,
    EvalDataset,
    ImageFolderSource,
    SourceConfig,
    SyntheticSource,
    ViewsDataset,
    build_source,
    collate_views,
)
from twist.data.datasets import SkippedImage
from twist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform

SYNTH = ["data.dataset=synthetic", "data.num_samples=12", "data.num_classes=3", "data.image_size=32",
         "augment.pipeline=barlow"]
DIGITS = ["data.dataset=digits", "data.image_size=16", "augment.pipeline=small_gray"]


def _png(path, size=(12, 10), seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _folder(root, classes=("cat", "ant", "bee"), per_class=2):
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            _png(root / name / f"{i}.png", seed=10 * c + i)
    return root


# ---- ImageFolderSource --------------------------------------------------------------------------

def test_folder_missing_dir_names_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=rf"image folder '{re.escape(str(missing))}' does not exist"):
        ImageFolderSource(str(missing))


def test_folder_without_class_subfolders_names_path(tmp_path):
    _png(tmp_path / "loose.png")  # images directly in the root are not a class layout
    with pytest.raises(DatasetError, match=rf"'{re.escape(str(tmp_path))}' has no class sub-folders"):
        ImageFolderSource(str(tmp_path))


def test_folder_with_class_folders_but_no_images_names_path(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=rf"'{re.escape(str(tmp_path))}' has class folders but no images"):
        ImageFolderSource(str(tmp_path))


def test_folder_labels_follow_sorted_class_names_and_images_load(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "bee" / "deeper").mkdir()
    nested = _png(root / "bee" / "deeper" / "x.PNG", seed=99)  # upper-case extension, nested folder
    (root / "ant" / "readme.txt").write_text("ignored")
    src = ImageFolderSource(str(root))
    assert src.classes == ["ant", "bee", "cat"]
    assert len(src) == 7
    labels = [label for _, label in src.samples]
    assert labels == [0, 0, 1, 1, 1, 2, 2]
    # Pixels come back unchanged (PNG is lossless) and as RGB.
    i = [p for p, _ in src.samples].index(str(root / "bee" / "deeper" / "x.PNG"))
    img, label = src.load(i)
    assert img.mode == "RGB" and label == 1
    np.testing.assert_array_equal(np.asarray(img), nested)


def test_folder_grayscale_image_is_converted_to_rgb(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((5, 5), 77, dtype=np.uint8), mode="L").save(tmp_path / "a" / "g.png")
    img, _ = ImageFolderSource(str(tmp_path)).load(0)
    assert img.mode == "RGB" and np.asarray(img).shape == (5, 5, 3) and (np.asarray(img) == 77).all()


def test_garbage_jpg_is_a_corrupt_image_naming_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    bad = tmp_path / "a" / "broken.jpg"
    bad.write_bytes(b"\x00\x01this is definitely not a jpeg" * 10)
    src = ImageFolderSource(str(tmp_path))
    with pytest.raises(CorruptImageError, match=rf"cannot read image '{re.escape(str(bad))}'"):
        src.load(0)


def test_truncated_png_is_a_corrupt_image_naming_the_file(tmp_path):
    (tmp_path / "a").mkdir()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()
    bad = tmp_path / "a" / "cut.png"
    bad.write_bytes(data[: len(data) // 2])
    Image.open(bad).close()  # the header alone still parses: the failure is in decoding
    src = ImageFolderSource(str(tmp_path))
    with pytest.raises(CorruptImageError, match=rf"cannot read image '{re.escape(str(bad))}'"):
        src.load(0)


def _views_dataset_with_one_corrupt(tmp_path, skip):
    root = _folder(tmp_path / "d", classes=("a", "b"), per_class=2)
    (root / "a" / "0.png").write_bytes(b"garbage")  # sorted first: index 0
    cfg = load_config(None, ["data.dataset=folder", f"data.path={root}", "data.image_size=8"])
    return ViewsDataset(ImageFolderSource(str(root)), train_transform(cfg), seed=0, skip_corrupt=skip)


def test_views_dataset_raises_on_corrupt_without_skip(tmp_path):
    ds = _views_dataset_with_one_corrupt(tmp_path, skip=False)
    with pytest.raises(CorruptImageError, match=r"0\.png"):
        ds[(0, 0)]


def test_views_dataset_skips_corrupt_and_collate_names_it(tmp_path):
    ds = _views_dataset_with_one_corrupt(tmp_path, skip=True)
    bad = str(tmp_path / "d" / "a" / "0.png")
    skipped = ds[(0, 0)]
    assert isinstance(skipped, SkippedImage) and skipped.location == bad and "cannot read image" in skipped.error
    batch = collate_views([ds[(0, i)] for i in range(4)])
    views, labels, indices, dropped = batch
    assert [s.location for s in dropped] == [bad]
    assert indices.tolist() == [1, 2, 3] and labels.tolist() == [0, 1, 1]
    assert len(views) == 2 and all(v.shape == (3, 3, 8, 8) for v in views)
    # Through a DataLoader as the trainer uses it, its worker process included.
    for workers in (0, 1):
        loader = DataLoader(ds, batch_size=4, sampler=EpochSampler(4, 4), collate_fn=collate_views,
                            num_workers=workers)
        (_, _, indices, dropped), = list(loader)
        assert [s.location for s in dropped] == [bad] and sorted(indices.tolist()) == [1, 2, 3]


def test_collate_views_stacks_per_view_and_lists_the_skipped():
    items = [([torch.full((3, 2, 2), float(i)), torch.full((3, 2, 2), -float(i))], i % 2, 10 + i) for i in range(3)]
    gone = [SkippedImage("a.png", "cannot read image 'a.png'"), SkippedImage("b.png", "cannot read image 'b.png'")]
    views, labels, indices, dropped = collate_views([items[0], gone[0], items[1], gone[1], items[2]])
    assert dropped == gone
    assert torch.equal(views[0][:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))
    assert torch.equal(views[1][:, 0, 0, 0], torch.tensor([0.0, -1.0, -2.0]))
    assert labels.tolist() == [0, 1, 0] and indices.tolist() == [10, 11, 12]
    assert collate_views(gone) == (None, None, None, gone)


# ---- build_source -------------------------------------------------------------------------------

def test_build_source_folder_reads_train_and_val(tmp_path):
    _folder(tmp_path / "train", classes=("x", "y"), per_class=3)
    _folder(tmp_path / "val", classes=("x", "y"), per_class=1)
    cfg = load_config(None, ["data.dataset=folder", f"data.path={tmp_path}"])
    source = SourceConfig.from_config(cfg)
    train, val = build_source(source, "train"), build_source(source, "val")
    assert isinstance(train, ImageFolderSource) and train.root == str(tmp_path / "train") and len(train) == 6
    assert val.root == str(tmp_path / "val") and len(val) == 2


def test_build_source_folder_missing_split_names_the_split_dir(tmp_path):
    _folder(tmp_path / "train", classes=("x",), per_class=1)
    cfg = load_config(None, ["data.dataset=folder", f"data.path={tmp_path}"])
    with pytest.raises(DatasetError, match=rf"image folder '{re.escape(str(tmp_path / 'val'))}' does not exist"):
        build_source(SourceConfig.from_config(cfg), "val")
    cfg2 = load_config(None, ["data.dataset=folder", f"data.path={tmp_path / 'absent'}"])
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "absent" / "train"))):
        build_source(SourceConfig.from_config(cfg2), "train")


def test_build_source_synthetic_uses_config_and_seed():
    cfg = load_config(None, SYNTH + ["seed=3"])
    src = build_source(SourceConfig.from_config(cfg))
    assert isinstance(src, SyntheticSource) and len(src) == 12 and len(src.classes) == 3
    np.testing.assert_array_equal(src.images, SyntheticSource(12, 3, 32, seed=3).images)


# ---- DigitsSource / SyntheticSource ---------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return DigitsSource()


def test_digits_source(digits):
    assert len(digits) == 1797 and digits.classes == [str(d) for d in range(10)]
    assert sorted(set(digits.labels.tolist())) == list(range(10))
    img, label = digits.load(5)
    assert img.mode == "L" and img.size == (8, 8) and isinstance(label, int) and 0 <= label <= 9
    # 0..16 pixel values spread over 0..255.
    from sklearn.datasets import load_digits
    raw = load_digits()
    np.testing.assert_array_equal(np.asarray(img), np.round(raw.images[5] * 255 / 16).astype(np.uint8))
    assert label == raw.target[5] and digits.images.max() == 255


def test_synthetic_source_is_deterministic_per_seed():
    a, b, c = SyntheticSource(9, 4, 16, seed=1), SyntheticSource(9, 4, 16, seed=1), SyntheticSource(9, 4, 16, seed=2)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    img, label = a.load(3)
    assert img.mode == "RGB" and img.size == (16, 16) and label == a.labels[3] and 0 <= label < 4
    np.testing.assert_array_equal(np.asarray(img), a.images[3])


# ---- ViewsDataset determinism ----------------------------------------------------------------------

def _synth_views_dataset(seed=0):
    cfg = load_config(None, SYNTH)
    return ViewsDataset(build_source(SourceConfig.from_config(cfg)), train_transform(cfg), seed=seed)


def test_views_repeat_for_the_same_key_and_differ_between_epochs():
    ds = _synth_views_dataset()
    first, again = ds[(0, 3)], ds[(0, 3)]
    assert first[1:] == again[1:]
    assert all(torch.equal(x, y) for x, y in zip(first[0], again[0]))
    other_epoch = ds[(1, 3)]
    assert not torch.equal(first[0][0], other_epoch[0][0])
    assert not torch.equal(first[0][0], first[0][1])                # the two views differ
    assert not torch.equal(ds[(0, 3)][0][0], _synth_views_dataset(seed=1)[(0, 3)][0][0])  # run seed matters


def test_views_do_not_disturb_the_global_rng():
    ds = _synth_views_dataset()
    torch.manual_seed(1234)
    expected = torch.rand(5)
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    ds[(0, 1)]
    ds[(2, 7)]
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.rand(5), expected)


def test_views_do_not_depend_on_the_global_rng():
    ds = _synth_views_dataset()
    torch.manual_seed(0)
    a = ds[(1, 2)][0]
    torch.manual_seed(999)
    torch.rand(17)
    b = ds[(1, 2)][0]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def _epoch_batches(ds, num_workers, epoch):
    sampler = EpochSampler(len(ds), batch_size=4, seed=0)
    sampler.set_epoch(epoch)
    loader = DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate_views, num_workers=num_workers)
    return list(loader)


def test_views_same_with_zero_and_two_workers():
    ds = _synth_views_dataset()
    serial, parallel = _epoch_batches(ds, 0, epoch=1), _epoch_batches(ds, 2, epoch=1)
    assert len(serial) == len(parallel) == 3
    for (v0, l0, i0, d0), (v1, l1, i1, d1) in zip(serial, parallel):
        assert torch.equal(i0, i1) and torch.equal(l0, l1) and d0 == d1 == []
        assert all(torch.equal(a, b) for a, b in zip(v0, v1))
    # And each batch item equals the dataset item for (epoch, index) fetched directly.
    views, _, indices, _ = serial[0]
    direct = ds[(1, int(indices[2]))][0]
    assert torch.equal(views[0][2], direct[0]) and torch.equal(views[1][2], direct[1])


# ---- transforms -------------------------------------------------------------------------------------

def test_barlow_two_views_on_synthetic_rgb():
    cfg = load_config(None, SYNTH)
    img, _ = build_source(SourceConfig.from_config(cfg)).load(0)
    torch.manual_seed(0)
    views = train_transform(cfg)(img)
    assert len(views) == 2
    for v in views:
        assert isinstance(v, torch.Tensor) and v.shape == (3, 32, 32) and v.dtype == torch.float32
    assert not torch.equal(views[0], views[1])


def test_small_gray_two_views_on_digits(digits):
    cfg = load_config(None, DIGITS)
    img, _ = digits.load(0)
    torch.manual_seed(0)
    views = train_transform(cfg)(img)
    assert len(views) == 2
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    for v in views:
        assert v.shape == (3, 16, 16)
        raw = v * std + mean  # undo the normalisation: the three channels are one gray channel repeated
        torch.testing.assert_close(raw[0], raw[1])
        torch.testing.assert_close(raw[0], raw[2])
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_small_gray_translate_shifts_the_views_by_up_to_its_fraction():
    # One bright pixel in the middle of a 16 px image; crops of the whole image, no other randomness.
    image = Image.fromarray(np.pad(np.full((2, 2), 255, np.uint8), 7), mode="L")
    quiet = ["augment.crop_scale=[1.0,1.0]", "augment.color_jitter=0", "augment.blur=[0,0]", "augment.rotation=0"]

    def centres(extra):
        cfg = load_config(None, DIGITS + quiet + extra)
        transform = train_transform(cfg)
        torch.manual_seed(0)
        found = []
        for _ in range(40):
            raw = transform(image)[0][0]
            ys, xs = torch.nonzero(raw > raw.min() + 0.5 * (raw.max() - raw.min()), as_tuple=True)
            found.append((xs.float().mean().item() - 7.5, ys.float().mean().item() - 7.5))
        return np.array(found)

    still, shifted = centres([]), centres(["augment.translate=0.25"])
    assert np.abs(still).max() < 0.6  # the crop and rotation alone leave the dot in place
    assert np.abs(shifted).max() > 1.5 and np.abs(shifted).max() <= 0.25 * 16 + 1


def test_small_gray_stroke_width_thickens_and_thins_the_strokes_by_one_pixel():
    # A vertical bar three pixels wide in a 16 px image; whole-image crops, no other randomness.
    bar = np.zeros((16, 16), np.uint8)
    bar[3:13, 6:9] = 255
    image = Image.fromarray(bar, mode="L")
    quiet = ["augment.crop_scale=[1.0,1.0]", "augment.color_jitter=0", "augment.blur=[0,0]", "augment.rotation=0"]

    def widths(extra):
        cfg = load_config(None, DIGITS + quiet + ["data.image_size=16"] + extra)
        transform = train_transform(cfg)
        torch.manual_seed(0)
        found = []
        for _ in range(40):
            raw = transform(image)[0][0]
            found.append(int((raw[8] > raw.min() + 0.5 * (raw.max() - raw.min())).sum()))
        return found

    assert set(widths([])) == {3}
    assert set(widths(["augment.stroke_width=1.0"])) == {1, 5}  # both directions, one pixel each side
    assert set(widths(["augment.stroke_width=0.5"])) == {1, 3, 5}


@pytest.mark.parametrize("overrides, mode, raw_size", [(SYNTH, "RGB", 20), (DIGITS, "L", 8)])
def test_eval_transform_shape_and_determinism(overrides, mode, raw_size):
    cfg = load_config(None, overrides)
    size = cfg["data"]["image_size"]
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (raw_size, raw_size, 3) if mode == "RGB"
                                                             else (raw_size, raw_size), dtype=np.uint8), mode=mode)
    transform = eval_transform(cfg["augment"]["pipeline"], cfg["data"]["image_size"])
    x = transform(img)
    assert x.shape == (3, size, size)
    assert torch.equal(x, transform(img))


def test_eval_dataset_items():
    cfg = load_config(None, SYNTH)
    src = build_source(SourceConfig.from_config(cfg))
    ds = EvalDataset(src, eval_transform(cfg["augment"]["pipeline"], cfg["data"]["image_size"]))
    x, label, index = ds[4]
    assert len(ds) == 12 and x.shape == (3, 32, 32) and label == src.labels[4] and index == 4


def test_digits_splits_partition_the_bundled_set_by_class():
    every, train, val = DigitsSource("all"), DigitsSource("train"), DigitsSource("val")
    assert (len(every), len(train), len(val)) == (1797, 1442, 355)
    combined = np.concatenate([train.images, val.images]).reshape(1797, -1)
    assert len({row.tobytes() for row in combined}) == len({row.tobytes() for row in every.images.reshape(1797, -1)})
    for digit in range(10):  # every fifth image of each class
        assert int((val.labels == digit).sum()) == int((every.labels == digit).sum()) // 5
    with pytest.raises(DatasetError, match="splits 'all', 'train' and 'val', not 'test'"):
        DigitsSource("test")


def test_synthetic_val_split_shares_the_classes_but_not_the_images():
    train, val = SyntheticSource(40, 4, 16, seed=3), SyntheticSource(40, 4, 16, seed=3, split="val")
    assert len(val) == 10 and val.classes == train.classes
    assert not any(np.array_equal(v, t) for v in val.images for t in train.images)
    np.testing.assert_array_equal(val.images, SyntheticSource(40, 4, 16, seed=3, split="val").images)
