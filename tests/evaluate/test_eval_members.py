"""Prediction CSVs and member folders: round trips and compatibility checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medens.evaluate.members import IncompatibleMembersError, align_members, load_member
from medens.evaluate.predictions import (
    Predictions,
    read_prediction_table,
    read_predictions,
    write_prediction_table,
    write_predictions,
)
from tests.evaluate.helpers import write_member

CLASSES = ["benign", "malignant", "normal"]


def make_predictions(seed: int, n: int, classes: list[str] = CLASSES, prefix: str = "test") -> Predictions:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(len(classes)), size=n)
    labels = [classes[i % len(classes)] for i in range(n)]
    return Predictions([f"{prefix}/img_{i:03d}.png" for i in range(n)], labels, list(classes), probs)


def make_member(
    root: Path, name: str, seed: int, init: str = "imagenet", split_hash: str = "abc123", **kw
) -> Path:
    config = {
        "dataset": "busi",
        "classes": CLASSES,
        "init": init,
        "split_hash": split_hash,
        "arch": "convnext_atto",
    }
    config.update(kw)
    return write_member(
        root / name, config, make_predictions(seed, 12), make_predictions(seed + 100, 9, prefix="val")
    )


def test_prediction_csv_round_trips_exactly(tmp_path: Path) -> None:
    preds = make_predictions(0, 25)
    preds.probs[0, 1] += preds.probs[0, 0]  # extreme values survive too (the row still sums to 1)
    preds.probs[0, 0] = 1e-300
    write_predictions(tmp_path / "p.csv", preds)
    back = read_predictions(tmp_path / "p.csv")
    assert back.paths == preds.paths and back.label_names == preds.label_names and back.classes == CLASSES
    np.testing.assert_array_equal(back.probs, preds.probs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_unreadable_images_round_trip_as_rows_without_probabilities(tmp_path: Path) -> None:
    preds = make_predictions(2, 4)
    preds.skipped = {"test/broken.png": "malignant"}
    write_predictions(tmp_path / "p.csv", preds)
    last = (tmp_path / "p.csv").read_text().splitlines()[-1]
    assert last == "test/broken.png,malignant,,,"  # listed, nothing predicted
    back = read_predictions(tmp_path / "p.csv")
    assert back.paths == preds.paths and back.skipped == {"test/broken.png": "malignant"}
    np.testing.assert_array_equal(back.probs, preds.probs)  # the skipped row is in no array or metric
    assert back.reorder(back.paths[::-1], CLASSES[::-1]).skipped == back.skipped


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("path,label,a,b\nx,a,,0.5\n", ":2: expected probabilities"),  # part-empty: damaged, not skipped
        ("path,label,a,b\nx,a,,\n", "received only 1 rows of images that could not be decoded"),
        ("path,label,a,b\nx,a,0.5,0.5\nx,a,,\n", ":3: expected each image path once"),
    ],
)
def test_rows_without_probabilities_are_checked(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "p.csv").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_predictions(tmp_path / "p.csv")


def test_multi_model_table_names_columns_by_model(tmp_path: Path) -> None:
    preds = make_predictions(1, 4)
    write_prediction_table(
        tmp_path / "t.csv", preds.paths, preds.label_names, CLASSES, {"a": preds.probs, "b": preds.probs}
    )
    header = (tmp_path / "t.csv").read_text().splitlines()[0]
    assert header == "path,label," + ",".join(f"{m}:{c}" for m in "ab" for c in CLASSES)


def test_multi_model_table_reads_back_by_model_with_its_skipped_rows(tmp_path: Path) -> None:
    a, b = make_predictions(3, 5), make_predictions(4, 5)
    write_prediction_table(tmp_path / "t.csv", a.paths, a.label_names, CLASSES, {"a": a.probs, "b": b.probs},
                           skipped={"test/broken.png": "normal"})  # fmt: skip
    paths, labels, probs, skipped = read_prediction_table(tmp_path / "t.csv")
    assert paths == a.paths and labels == a.label_names and skipped == {"test/broken.png": "normal"}
    assert list(probs) == ["a", "b"]
    np.testing.assert_array_equal(probs["a"], a.probs)
    np.testing.assert_array_equal(probs["b"], b.probs)
    (tmp_path / "bad.csv").write_text("path,label,a:x,a:y\np,x,0.5,\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: expected probabilities"):
        read_prediction_table(tmp_path / "bad.csv")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("file,label,a,b\nx,a,0.5,0.5\n", "expected a header 'path,label"),
        ("path,label,a,b\nx,a,0.5\n", ":2: expected 4 fields, received 3"),
        ("path,label,a,b\nx,a,0.5,high\n", ":2: expected probabilities"),
        ("path,label,a,a\nx,a,0.5,0.5\n", "expected distinct class columns"),
        ("path,label,a,b\nx,a,0.5,0.5\nx,b,0.5,0.5\n", ":3: expected each image path once, received 'x' again "
         r"\(first on line 2\)"),
        ("path,label,a,b\n", "expected at least one prediction row after the header, received none"),
        ("path,label,a,b\nx,a,0.5,0.5\ny,a,1.5,-0.5\n", r":3: expected probabilities in \[0, 1\], received 1.5"),
        ("path,label,a,b\nx,a,nan,0.5\n", r":2: expected probabilities in \[0, 1\], received nan"),
        ("path,label,a,b\nx,a,0.5,0.5\ny,a,0.3,0.3\n", ":3: expected probabilities summing to 1"),
        ("path,label,a,b\nx,a,0.3333,0.6666\n", None),
    ],
)
def test_malformed_prediction_csv_is_refused(tmp_path: Path, text: str, match: str | None) -> None:
    (tmp_path / "bad.csv").write_text(text)
    if match is None:  # rounded probabilities within the tolerance are accepted
        assert read_predictions(tmp_path / "bad.csv").probs.shape == (1, 2)
        return
    with pytest.raises(ValueError, match=match):
        read_predictions(tmp_path / "bad.csv")


def test_binary_prediction_csv_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"bad.csv: expected a UTF-8 text CSV"):
        read_predictions(tmp_path / "bad.csv")


def test_unknown_label_is_named() -> None:
    preds = Predictions(["a"], ["cyst"], ["x", "y"], np.array([[0.5, 0.5]]))
    with pytest.raises(
        ValueError, match=r"label: expected class names from \['x', 'y'\], received \['cyst'\]"
    ):
        _ = preds.labels


def test_load_member_reads_folder_and_names_by_init(tmp_path: Path) -> None:
    m = load_member(make_member(tmp_path, "ft-mae", 0, init="mae:/runs/pretrain/encoder.safetensors"))
    assert (m.name, m.label) == ("mae-init", "MAE-init")
    assert m.test.probs.shape == (12, 3) and m.val is not None and m.val.probs.shape == (9, 3)
    r = load_member(make_member(tmp_path, "ft-in", 1, init="imagenet-unavailable-random-init"))
    assert "random" in r.name and "Random-init" in r.label and "ImageNet" in r.label


def test_load_member_names_missing_files(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="expected config.yaml in member folder"):
        load_member(tmp_path / "empty")


def test_align_reorders_rows_and_columns(tmp_path: Path) -> None:
    a = load_member(make_member(tmp_path, "a", 0))
    b_dir = make_member(tmp_path, "b", 1, init="mae:x")
    b_preds = read_predictions(b_dir / "predictions.csv")
    order = list(reversed(range(12)))
    shuffled = Predictions(
        [b_preds.paths[i] for i in order],
        [b_preds.label_names[i] for i in order],
        ["normal", "benign", "malignant"],
        b_preds.probs[order][:, [2, 0, 1]],
    )
    write_predictions(b_dir / "predictions.csv", shuffled)
    aligned = align_members([a, load_member(b_dir)])
    assert aligned[1].test.paths == a.test.paths
    np.testing.assert_array_equal(aligned[1].test.probs, b_preds.probs)


def test_members_with_different_classes_are_refused(tmp_path: Path) -> None:
    a = load_member(make_member(tmp_path, "a", 0))
    other = ["benign", "malignant", "cyst"]
    write_member(
        tmp_path / "b",
        {"classes": other, "init": "mae:x", "split_hash": "abc123"},
        make_predictions(1, 12, other),
    )
    with pytest.raises(IncompatibleMembersError, match="expected the same classes in every member"):
        align_members([a, load_member(tmp_path / "b")])


def test_members_from_different_splits_are_refused(tmp_path: Path) -> None:
    a = load_member(make_member(tmp_path, "a", 0, split_hash="abc123"))
    b = load_member(make_member(tmp_path, "b", 1, split_hash="fff999", init="mae:x"))
    with pytest.raises(IncompatibleMembersError, match="expected members trained on the same split"):
        align_members([a, b])


def test_members_with_different_test_images_or_labels_are_refused(tmp_path: Path) -> None:
    a = load_member(make_member(tmp_path, "a", 0))
    b_dir = make_member(tmp_path, "b", 1, init="mae:x")
    preds = read_predictions(b_dir / "predictions.csv")
    preds.paths[0] = "test/elsewhere.png"
    write_predictions(b_dir / "predictions.csv", preds)
    with pytest.raises(IncompatibleMembersError, match="expected the same test images in every member"):
        align_members([a, load_member(b_dir)])
    preds.paths[0] = "test/img_000.png"
    preds.label_names[0] = "normal"
    write_predictions(b_dir / "predictions.csv", preds)
    with pytest.raises(IncompatibleMembersError, match="expected the same labels for the same test images"):
        align_members([a, load_member(b_dir)])


def test_validation_predictions_required_when_asked(tmp_path: Path) -> None:
    a = load_member(make_member(tmp_path, "a", 0))
    b_dir = make_member(tmp_path, "b", 1, init="mae:x")
    (b_dir / "val_predictions.csv").unlink()
    with pytest.raises(IncompatibleMembersError, match="expected val_predictions.csv in every member"):
        align_members([a, load_member(b_dir)], require_val=True)
    assert all(m.val is None for m in align_members([a, load_member(b_dir)]))


def test_duplicate_inits_get_distinct_names_and_single_member_is_refused(tmp_path: Path) -> None:
    a = load_member(make_member(tmp_path, "seed0", 0))
    b = load_member(make_member(tmp_path, "seed1", 1))
    names = [m.name for m in align_members([a, b])]
    assert names == ["imagenet-init@seed0", "imagenet-init@seed1"]
    with pytest.raises(IncompatibleMembersError, match="expected at least 2 member folders, received 1"):
        align_members([a])
