"""Duplicate detection: near-copies joined, distinct images apart, groups respected by every split, conflicts
excluded and counted, signatures cached; and, on the real BUSI images, no test image with a twin in training."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageEnhance

from medens.data import DatasetError, DuplicateGroups, find_duplicates, load_dataset, make_splits, plan_splits
from medens.data.__main__ import main as data_main
from medens.data.duplicates import SIGNATURE_CACHE_FILE, hamming_pairs, join_groups
from medens.data.splits import EXCLUDED_LABEL_CONFLICT

BUSI = Path(__file__).resolve().parents[3] / "shared" / "data" / "busi"


def _originals(count: int = 10, size: int = 256) -> list[Image.Image]:
    """Distinct grey images with structure at every scale (smooth blobs plus speckle), like ultrasound."""
    rng = np.random.default_rng(7)
    out = []
    for _ in range(count):
        coarse = rng.random((8, 8))
        field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC),
                           dtype=float)
        field += rng.normal(0, 12, (size, size))
        out.append(Image.fromarray(np.clip(field, 0, 255).astype(np.uint8)).convert("RGB"))
    return out


def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _shifted(image: Image.Image, pixels: int) -> Image.Image:
    array = np.asarray(image)
    moved = np.zeros_like(array)
    moved[pixels:, pixels:] = array[:-pixels, :-pixels]
    return Image.fromarray(moved)


COPIES = {
    "resized": lambda im: im.resize((im.width // 2, im.height // 2), Image.BILINEAR),
    "upscaled": lambda im: im.resize((im.width * 3 // 2, im.height * 3 // 2), Image.BICUBIC),
    "jpeg": lambda im: _jpeg(im, 40),
    "shift2": lambda im: _shifted(im, 2),
    "shift4": lambda im: _shifted(im, 4),
    "crop3": lambda im: im.crop((3, 3, im.width, im.height)),
    "brighter": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    "darker": lambda im: ImageEnhance.Brightness(im).enhance(0.8),
}


def _folder_dataset(root: Path, images: dict[str, Image.Image]):
    """A ``folder`` dataset; keys are ``class/name.ext``."""
    for name, image in images.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    return load_dataset("folder", root)


@pytest.fixture(scope="module")
def copies_dataset(tmp_path_factory):
    originals = _originals()
    images = {f"{'a' if i < 4 else 'b'}/orig{i:02d}.png": im for i, im in enumerate(originals)}
    for i, im in enumerate(originals[:4]):  # every kind of copy of four originals, in the same class
        for kind, make in COPIES.items():
            images[f"a/copy{i:02d}-{kind}.{'jpg' if kind == 'jpeg' else 'png'}"] = make(im)
    return _folder_dataset(tmp_path_factory.mktemp("copies"), images)


def _group_of(found: DuplicateGroups, dataset, item: str) -> set[str] | None:
    index = dataset.ids.index(item)
    for group in found.groups:
        if index in group:
            return {dataset.ids[i] for i in group}
    return None


@pytest.mark.parametrize("kind", sorted(COPIES))
def test_every_kind_of_copy_joins_its_original(copies_dataset, kind, tmp_path):
    found = find_duplicates(copies_dataset, cache_dir=tmp_path, progress=False)
    for i in range(4):
        ext = "jpg" if kind == "jpeg" else "png"
        group = _group_of(found, copies_dataset, f"a/copy{i:02d}-{kind}.{ext}")
        assert group is not None and f"a/orig{i:02d}.png" in group, kind


def test_distinct_images_stay_apart(copies_dataset, tmp_path):
    found = find_duplicates(copies_dataset, cache_dir=tmp_path, progress=False)
    for group in found.groups:
        originals = {copies_dataset.ids[i].split("-")[0].split(".")[0].replace("copy", "orig") for i in group}
        assert len(originals) == 1, originals  # a group never mixes copies of two originals
    assert len(found.groups) == 4 and found.images_in_groups == 4 * (1 + len(COPIES))
    assert found.conflicts == []


def test_signatures_are_cached_by_content(tmp_path, monkeypatch):
    images = {f"{'ab'[i % 2]}/{i}.png": im for i, im in enumerate(_originals(4, 64))}
    dataset = _folder_dataset(tmp_path / "data", images)
    first = find_duplicates(dataset, cache_dir=tmp_path / "cache", progress=False)
    assert (tmp_path / "cache" / SIGNATURE_CACHE_FILE).is_file()

    def no_decoding(index):
        raise AssertionError("a cached signature was decoded again")

    monkeypatch.setattr(dataset, "load_image", no_decoding)
    again = find_duplicates(dataset, cache_dir=tmp_path / "cache", progress=False)
    assert again.groups == first.groups
    # A changed file is decoded again: its key is its content.
    monkeypatch.undo()
    _originals(5, 64)[4].save(tmp_path / "data" / "a" / "0.png")
    decoded = []
    original_load = dataset.load_image
    monkeypatch.setattr(dataset, "load_image", lambda i: decoded.append(i) or original_load(i))
    find_duplicates(dataset, cache_dir=tmp_path / "cache", progress=False)
    assert decoded == [dataset.ids.index("a/0.png")]


@pytest.fixture
def conflict_dataset(tmp_path):
    """Twelve distinct images per class, and one image filed both as ``a`` and as ``b``."""
    originals = _originals(25, 64)
    images = {f"a/{i}.png": originals[i] for i in range(12)}
    images |= {f"b/{i}.png": originals[12 + i] for i in range(12)}
    images["b/twin.png"] = originals[0]
    return _folder_dataset(tmp_path / "data", images)


def test_conflicts_are_excluded_counted_and_recorded(conflict_dataset, tmp_path):
    plan = plan_splits(conflict_dataset, hash_cache_dir=tmp_path, progress=False)
    twins = sorted(conflict_dataset.ids.index(i) for i in ("a/0.png", "b/twin.png"))
    assert plan.duplicates.conflicts == [twins]
    assert plan.excluded == {EXCLUDED_LABEL_CONFLICT: twins}
    assert not set(twins) & {i for part in plan.splits.values() for i in part}
    assert sum(len(p) for p in plan.splits.values()) == len(conflict_dataset) - 2

    make_splits(conflict_dataset, out_dir=tmp_path, hash_cache_dir=tmp_path, progress=False)
    record = json.loads((tmp_path / "splits.json").read_text())
    assert record["dedupe"] is True and record["num_excluded"] == 2
    assert record["excluded"] == {EXCLUDED_LABEL_CONFLICT: ["a/0.png", "b/twin.png"]}
    assert record["duplicates"]["conflicts"] == [["a/0.png", "b/twin.png"]]
    assert record["duplicates"]["threshold"] == plan.duplicates.threshold

    kept = plan_splits(conflict_dataset, hash_cache_dir=tmp_path, keep_conflicts=True, progress=False)
    placed = [name for name, part in kept.splits.items() if set(twins) & set(part)]
    assert kept.excluded == {} and len(placed) == 1  # kept, and together


def test_dedupe_off_is_the_plain_split_and_changes_the_record(conflict_dataset, tmp_path):
    plain = plan_splits(conflict_dataset, dedupe=False)
    assert plain.duplicates is None and plain.excluded == {}
    assert sum(len(p) for p in plain.splits.values()) == len(conflict_dataset)
    make_splits(conflict_dataset, out_dir=tmp_path / "off", dedupe=False)
    make_splits(conflict_dataset, out_dir=tmp_path / "on", hash_cache_dir=tmp_path, progress=False)
    off = json.loads((tmp_path / "off" / "splits.json").read_text())
    on = json.loads((tmp_path / "on" / "splits.json").read_text())
    assert off["dedupe"] is False and "duplicates" not in off and on["splits"] != off["splits"]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 2), min_size=20, max_size=60), st.data())
def test_groups_never_straddle_a_split_or_a_fold(labels, data):
    """Property: for any grouping, every split and every fold keeps each group on one side."""
    from medens.data.base import LabeledDataset

    count = len(labels)
    assignment = data.draw(st.lists(st.integers(0, count // 3), min_size=count, max_size=count))
    members: dict[int, list[int]] = {}
    for index, g in enumerate(assignment):
        members.setdefault(g, []).append(index)
    pairs = np.array([(g[0], i) for g in members.values() for i in g[1:]], dtype=np.int64).reshape(-1, 2)
    groups = join_groups(count, pairs, None, labels)
    groups.threshold, groups.min_correlation = 12, 0.93

    class Items(LabeledDataset):
        def __init__(self):
            self.name, self.root, self.classes, self.strict, self.skipped = "items", None, ["x", "y", "z"], False, []
            self._init_items(list(labels), [f"i{i}" for i in range(count)])

    items = Items()
    side = {}
    for fold in (None, 0, 1, 2):
        plan = plan_splits(items, duplicates=groups, keep_conflicts=True, seed=3,
                           folds=None if fold is None else 3, fold=fold)
        for name, part in plan.splits.items():
            for index in part:
                side[index] = name
        for group in groups.groups:
            assert len({side[i] for i in group}) == 1
    # Folds: the test folds of 3-fold cross-validation partition the items, groups whole.
    tests = [set(plan_splits(items, duplicates=groups, keep_conflicts=True, seed=3, folds=3, fold=f)
                 .splits["test"]) for f in range(3)]
    assert sorted(i for t in tests for i in t) == list(range(count))


def test_hamming_pairs_matches_brute_force():
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 300, dtype=np.uint64)
    hashes[10] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart
    found = {tuple(p) for p in hamming_pairs(hashes, 20)}
    bits = np.unpackbits(hashes.view(np.uint8).reshape(-1, 8), axis=1)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    expected = {(i, j) for i in range(300) for j in range(i + 1, 300) if distance[i, j] <= 20}
    assert found == expected and (3, 10) in found


def test_bad_threshold_is_refused_by_name(conflict_dataset):
    with pytest.raises(DatasetError, match="'threshold' must be in 0..64, got 65"):
        find_duplicates(conflict_dataset, threshold=65)
    with pytest.raises(DatasetError, match="'threshold' must be an int"):
        find_duplicates(conflict_dataset, threshold=2.5)


def test_data_cli_duplicates_json_and_contact_sheet(conflict_dataset, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    argv = ["--dataset", "folder", "--data-root", str(conflict_dataset.root), "--duplicates",
            "--sheet", str(sheet), "--cache-dir", str(tmp_path / "cache")]
    assert data_main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["images_in_groups"] == 2 and record["threshold"] == 12
    assert record["groups"] == [["a/0.png", "b/twin.png"]] and record["conflicts"] == record["groups"]
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width > 100
    assert data_main(argv) == 0
    text = capsys.readouterr().out
    assert "label conflicts: 1 groups, 2 images (excluded by the splits)" in text


@pytest.mark.skipif(not BUSI.is_dir(), reason=f"the real BUSI images are not at {BUSI} (../shared/data/busi)")
def test_real_busi_default_split_puts_no_near_twin_across_train_and_test(tmp_path):
    """The leak measured before duplicate-aware splits (40 of 156 test images had a twin in training) is gone."""
    from medens.data.duplicates import _standardized, difference_hash, image_signatures

    dataset = load_dataset("busi", BUSI)
    found = find_duplicates(dataset, progress=False)
    assert 100 <= len(found.groups) and found.images_in_groups >= 235  # the published audit's count, at least
    assert len(found.conflicts) >= 6
    splits = make_splits(dataset, seed=0, progress=False)
    thumbs, _ = image_signatures(dataset, progress=False)
    hashes, unit = difference_hash(thumbs), _standardized(thumbs)
    train, test = np.array(splits["train"]), np.array(splits["test"])
    distance = np.bitwise_count(hashes[test][:, None] ^ hashes[train][None, :])
    twins = (distance <= 4) & ((unit[test] @ unit[train].T) >= 0.9)
    assert not twins.any(), [dataset.ids[test[i]] for i in np.nonzero(twins.any(1))[0]]
