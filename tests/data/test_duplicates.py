"""Duplicate detection: near-copies joined, distinct images apart, no chaining, groups respected by every split,
conflicts excluded and counted, signatures cached (old caches rebuilt); and, on the real BUSI, PneumoniaMNIST and
BreastMNIST images, generated copies found among look-alikes and no test image with a twin in training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from medens.data import DatasetError, DuplicateGroups, find_duplicates, load_dataset, make_splits, plan_splits
from medens.data.__main__ import main as data_main
from medens.data.duplicates import (
    DEFAULT_MIN_CORRELATION,
    DEFAULT_THRESHOLD,
    METHOD,
    SIGNATURE_CACHE_FILE,
    aligned_similarity,
    detail_spectra,
    hamming_pairs,
    join_groups,
    linked_groups,
    nearest_neighbours,
)
from medens.data.nearcopies import COPY_KINDS, injection_check, near_copies
from medens.data.signatures import perceptual_hash, thumbnail
from medens.data.splits import EXCLUDED_LABEL_CONFLICT

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BUSI = SHARED / "busi"
MEDMNIST = SHARED / "medmnist"


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
        for number, copy in enumerate(near_copies(im).values()):
            images[f"a/copy{i:02d}-{number}.png"] = copy
    return _folder_dataset(tmp_path_factory.mktemp("copies"), images)


def _group_of(found: DuplicateGroups, dataset, item: str) -> set[str] | None:
    index = dataset.ids.index(item)
    for group in found.groups:
        if index in group:
            return {dataset.ids[i] for i in group}
    return None


@pytest.fixture(scope="module")
def copies_found(copies_dataset, tmp_path_factory):
    return find_duplicates(copies_dataset, cache_dir=tmp_path_factory.mktemp("cache"), progress=False)


@pytest.mark.parametrize("number,kind", list(enumerate(COPY_KINDS)))
def test_every_kind_of_copy_joins_its_original(copies_dataset, copies_found, number, kind):
    for i in range(4):
        group = _group_of(copies_found, copies_dataset, f"a/copy{i:02d}-{number}.png")
        assert group is not None and f"a/orig{i:02d}.png" in group, kind


def test_distinct_images_stay_apart(copies_dataset, copies_found):
    found = copies_found
    for group in found.groups:
        originals = {copies_dataset.ids[i].split("-")[0].split(".")[0].replace("copy", "orig") for i in group}
        assert len(originals) == 1, originals  # a group never mixes copies of two originals
    assert len(found.groups) == 4 and found.images_in_groups == 4 * (1 + len(COPY_KINDS))
    assert found.conflicts == []
    # The evidence: every grouped image but the medoid has its distance and similarity to the medoid.
    for group in found.groups:
        medoids = {found.evidence[i][0] for i in group if i in found.evidence}
        assert len(medoids) == 1 and medoids <= set(group)
        assert all(found.evidence[i][2] >= DEFAULT_MIN_CORRELATION for i in group if i not in medoids)


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
    assert record["duplicates"]["method"] == METHOD
    assert record["duplicates"]["parameters"] == plan.duplicates.parameters()
    make_splits(conflict_dataset, out_dir=tmp_path / "strict", hash_cache_dir=tmp_path, progress=False,
                dedupe_threshold=7, min_correlation=0.99)
    strict = json.loads((tmp_path / "strict" / "splits.json").read_text())["duplicates"]["parameters"]
    assert strict["threshold"] == 7 and strict["min_correlation"] == 0.99

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
    with pytest.raises(DatasetError, match="'threshold' must be in 0..256, got 300"):
        find_duplicates(conflict_dataset, threshold=300)
    with pytest.raises(DatasetError, match="'neighbours' must be a positive int, got 0"):
        find_duplicates(conflict_dataset, neighbours=0)
    with pytest.raises(DatasetError, match="'threshold' must be an int"):
        find_duplicates(conflict_dataset, threshold=2.5)


def test_data_cli_duplicates_json_and_contact_sheet(conflict_dataset, tmp_path, capsys):
    sheet = tmp_path / "sheet.png"
    argv = ["--dataset", "folder", "--data-root", str(conflict_dataset.root), "--duplicates",
            "--sheet", str(sheet), "--plot", str(tmp_path / "plot.png"), "--cache-dir", str(tmp_path / "cache")]
    assert data_main([*argv, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["images_in_groups"] == 2 and record["threshold"] == DEFAULT_THRESHOLD
    assert record["groups"] == [["a/0.png", "b/twin.png"]] and record["conflicts"] == record["groups"]
    assert record["method"] == METHOD and record["parameters"]["min_correlation"] == DEFAULT_MIN_CORRELATION
    for png in (sheet, tmp_path / "plot.png"):
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 100
    assert data_main([*argv, "--dedupe-threshold", "0", "--json"]) == 0  # the override: 0 bits, exact hashes
    assert json.loads(capsys.readouterr().out)["threshold"] == 0
    assert data_main(argv) == 0
    text = capsys.readouterr().out
    assert "label conflicts: 1 groups, 2 images (excluded by the splits)" in text


@pytest.mark.skipif(not BUSI.is_dir(), reason=f"the real BUSI images are not at {BUSI} (../shared/data/busi)")
def test_real_busi_default_split_puts_no_near_twin_across_train_and_test(tmp_path):
    """The leak measured before duplicate-aware splits (40 of 156 test images had a twin in training) is gone."""
    from medens.data.signatures import image_signatures

    dataset = load_dataset("busi", BUSI)
    found = find_duplicates(dataset, cache_dir=tmp_path, progress=False)
    assert 100 <= len(found.groups) and found.images_in_groups >= 235  # the published audit's count, at least
    assert len(found.conflicts) >= 6 and found.largest_group <= 8
    splits = make_splits(dataset, seed=0, hash_cache_dir=tmp_path, progress=False)
    thumbs, _ = image_signatures(dataset, tmp_path, progress=False)
    train, test = np.array(splits["train"]), np.array(splits["test"])
    pairs = np.stack(np.meshgrid(test, train, indexing="ij"), axis=-1).reshape(-1, 2)
    similarity = aligned_similarity(detail_spectra(thumbs), pairs)
    twins = pairs[similarity >= DEFAULT_MIN_CORRELATION]
    assert not len(twins), [(dataset.ids[a], dataset.ids[b]) for a, b in twins[:5]]


def _real_images(name: str):
    if name == "busi":
        if not BUSI.is_dir():
            pytest.skip(f"the real BUSI images are not at {BUSI} (../shared/data/busi)")
        dataset = load_dataset("busi", BUSI)
        return [dataset.load_image(i).convert("L") for i in range(len(dataset))]
    path = MEDMNIST / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"the real MedMNIST file is not at {path} (../shared/data/medmnist)")
    with np.load(path) as data:
        return [Image.fromarray(x) for part in ("train", "val", "test") for x in data[f"{part}_images"]]


@pytest.mark.parametrize("name", ["busi", "pneumoniamnist", "breastmnist"])
def test_generated_copies_hidden_in_real_images_are_found_and_nothing_else_is_joined_to_them(name):
    """Ten kinds of copy of 20 real images, hidden among all the others: each found with its original."""
    images = _real_images(name)
    result = injection_check(images, len(images), originals=20, seed=1)
    missed = [(images_index, kind) for images_index, kind, joined in result.details if not joined]
    assert result.overall_recall >= 0.97 and min(result.recall.values()) >= 0.9, missed
    assert result.false_matches == 0
    assert all(len(g) <= 8 for g in result.dataset_groups)  # the real duplicates stay small groups


def test_real_chest_xrays_are_not_joined_because_they_look_alike(tmp_path):
    """PneumoniaMNIST: 5030 chest X-rays that share one layout. The old detector made a group of 440 and excluded
    458 images; distinct X-rays must stay apart, so groups stay small and label conflicts rare."""
    path = MEDMNIST / "pneumoniamnist.npz"
    if not path.is_file():
        pytest.skip(f"the real MedMNIST file is not at {path} (../shared/data/medmnist)")
    dataset = load_dataset("medmnist:pneumoniamnist", MEDMNIST)
    found = find_duplicates(dataset, cache_dir=tmp_path, progress=False)
    assert found.largest_group <= 4 and found.images_in_groups <= 0.03 * len(dataset)
    assert len(found.conflicting_items()) <= 0.005 * len(dataset)
    assert np.nanmedian(found.nearest_similarity) < DEFAULT_MIN_CORRELATION - 0.2  # the distinct hump


def test_a_chain_of_look_alikes_is_not_one_group():
    """A~B and B~C are alike, A and C are not: no group holds all three, with the pair A-C compared or not."""
    pairs = np.array([[0, 1], [1, 2], [3, 4]])
    similarity = np.array([0.9, 0.9, 0.95])
    assert [0, 1, 2] not in linked_groups(5, pairs, similarity, 0.8, measure=lambda extra: np.full(len(extra), 0.1))
    assert [0, 1, 2] not in linked_groups(5, pairs, similarity, 0.8)  # A-C never compared: counts as unlike
    groups = linked_groups(5, pairs, similarity, 0.8, measure=lambda extra: np.full(len(extra), 0.85))
    assert [0, 1, 2] in groups and [3, 4] in groups  # all three alike: one group


def test_a_chain_of_real_images_morphing_into_each_other_is_not_one_group(tmp_path):
    """Images A, B = A blended with C, and C: detected on thumbnails end to end, A and C are never grouped."""
    a, c = _originals(2, 64)
    array = [np.asarray(im, dtype=float) for im in (a, c)]
    steps = [Image.fromarray(((1 - w) * array[0] + w * array[1]).astype(np.uint8)) for w in np.linspace(0, 1, 9)]
    dataset = _folder_dataset(tmp_path / "data", {f"{'ab'[i % 2]}/{i}.png": im for i, im in enumerate(steps)})
    found = find_duplicates(dataset, cache_dir=tmp_path / "cache", progress=False)
    ends = {dataset.ids.index("a/0.png"), dataset.ids.index("a/8.png")}
    assert found.groups  # neighbours in the chain are alike
    assert all(not ends <= set(group) for group in found.groups), found.groups


def test_perceptual_hash_is_imagehash_phash():
    import imagehash

    thumbs = np.random.default_rng(2).integers(0, 256, (6, 32, 32), dtype=np.uint8)
    for thumb, words in zip(thumbs, perceptual_hash(thumbs), strict=True):
        expected = imagehash.phash(Image.fromarray(thumb), hash_size=16, highfreq_factor=2).hash.ravel()
        assert (np.unpackbits(words.astype(">u8").view(np.uint8)).astype(bool) == expected).all()


def test_nearest_neighbours_and_wide_hamming_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    hashes = rng.integers(0, 2**63, (200, 4), dtype=np.uint64)
    hashes[7] = hashes[3] ^ np.array([1, 0, 3, 0], dtype=np.uint64)  # 3 bits apart
    bits = np.unpackbits(hashes.astype(">u8").view(np.uint8), axis=1)
    distance = (bits[:, None, :] != bits[None, :, :]).sum(-1)
    expected = {(i, j) for i in range(200) for j in range(i + 1, 200) if distance[i, j] <= 110}
    assert {tuple(p) for p in hamming_pairs(hashes, 110)} == expected
    usable = np.ones(200, dtype=bool)
    usable[11] = False
    index, dist = nearest_neighbours(hashes, 5, usable)
    np.fill_diagonal(distance, 10**6)
    distance[:, 11] = 10**6
    for row in range(200):
        if row == 11:
            assert (dist[row] == 2**30).all()
            continue
        assert 11 not in index[row] and (dist[row] == np.sort(distance[row])[:5]).all()
        assert (distance[row, index[row]] == dist[row]).all()
    assert index[3, 0] == 7 and dist[3, 0] == 3


def test_aligned_similarity_forgives_a_small_shift_but_not_another_image():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (40, 40)).astype(float)
    from scipy.ndimage import gaussian_filter

    base = gaussian_filter(base, 1.0)
    thumbs = np.stack([base[4:36, 4:36], base[5:37, 5:37], gaussian_filter(rng.random((32, 32)) * 255, 1.0)])
    spectra = detail_spectra(thumbs.astype(np.uint8))
    same, shifted, other = aligned_similarity(spectra, np.array([[0, 0], [0, 1], [0, 2]]))
    unaligned = aligned_similarity(spectra, np.array([[0, 1]]), max_shift=0.0)[0]
    assert same == pytest.approx(1.0, abs=1e-4)
    assert shifted > 0.9 > unaligned and other < 0.3


def test_an_old_or_broken_signature_cache_is_rebuilt_not_trusted(tmp_path):
    images = {f"{'ab'[i % 2]}/{i}.png": im for i, im in enumerate(_originals(4, 64))}
    dataset = _folder_dataset(tmp_path / "data", images)
    cache = tmp_path / "cache"
    cache.mkdir()
    from medens.data.signatures import _item_keys

    keys = np.array(_item_keys(dataset))  # the keys of today, with the 16 x 16 thumbnails of the old format
    np.savez(cache / SIGNATURE_CACHE_FILE, keys=keys, thumbnails=np.zeros((len(keys), 16, 16), np.uint8))
    fresh = find_duplicates(dataset, cache_dir=tmp_path / "fresh", progress=False)
    found = find_duplicates(dataset, cache_dir=cache, progress=False)
    assert found.groups == fresh.groups and (found.nearest_similarity == fresh.nearest_similarity).all()
    with np.load(cache / SIGNATURE_CACHE_FILE) as data:
        assert "signatures" in data.files and data["signatures"].shape == (4, 32, 32)
    for broken in (b"PK\x03\x04 not a zip", b"not numpy at all"):
        (cache / SIGNATURE_CACHE_FILE).write_bytes(broken)
        assert find_duplicates(dataset, cache_dir=cache, progress=False).groups == fresh.groups
    np.save(cache / "plain.npy", np.zeros(3))
    (cache / "plain.npy").replace(cache / SIGNATURE_CACHE_FILE)  # an array, not an archive
    assert find_duplicates(dataset, cache_dir=cache, progress=False).groups == fresh.groups


def test_thumbnail_of_a_tiny_image_still_drops_its_border():
    image = Image.new("L", (28, 28), 0)
    image.paste(200, (1, 1, 27, 27))  # a one-pixel black frame
    assert thumbnail(image).min() > 150


def test_the_groups_a_dataset_ships_come_first_and_detection_adds_what_they_miss(tmp_path, monkeypatch):
    """Two different-looking images of one lesion stay together (and conflict when labelled apart); a copy the
    lesion ids miss is joined by the detector; ``known_groups=False`` leaves only the detector's groups."""
    originals = _originals(4, 64)
    images = {"a/0.png": originals[0], "a/1.png": originals[0].rotate(90), "a/2.png": originals[1],
              "b/3.png": originals[2], "b/4.png": originals[3]}
    dataset = _folder_dataset(tmp_path / "data", images)
    lesion = {"a/2.png": "L1", "b/3.png": "L1"}
    monkeypatch.setattr(type(dataset), "groups", property(lambda self: [lesion.get(i) for i in self.ids]))
    ids = lambda groups: sorted(sorted(dataset.ids[i] for i in g) for g in groups)  # noqa: E731
    found = find_duplicates(dataset, cache_dir=tmp_path / "cache", progress=False)
    assert ids(found.groups) == [["a/2.png", "b/3.png"]]  # a rotated image is not a copy; the lesion is a group
    assert ids(found.conflicts) == [["a/2.png", "b/3.png"]]
    (tmp_path / "data" / "b" / "4.png").unlink()
    originals[0].save(tmp_path / "data" / "b" / "4.png")  # now a copy of a/0.png, under another label
    dataset = load_dataset("folder", tmp_path / "data")
    found = find_duplicates(dataset, cache_dir=tmp_path / "cache", progress=False)
    assert ids(found.groups) == [["a/0.png", "b/4.png"], ["a/2.png", "b/3.png"]]
    plain = find_duplicates(dataset, cache_dir=tmp_path / "cache", progress=False, known_groups=False)
    assert ids(plain.groups) == [["a/0.png", "b/4.png"]]


def test_detect_on_fewer_than_two_images_and_on_unreadable_ones():
    from medens.data.duplicates import detect

    for count in (0, 1):
        groups, facts = detect(np.zeros((count, 32, 32), np.uint8))
        assert groups == [] and facts["nearest_similarity"].shape == (count,)
    twins = np.random.default_rng(5).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    twins[1] = twins[0]
    assert detect(twins)[0] == [[0, 1]]
    assert detect(twins, np.array([True, False, True]))[0] == []  # an unreadable image joins nothing
