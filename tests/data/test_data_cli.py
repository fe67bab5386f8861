"""python -m medens.data: classes, counts per class and split, sizes, skipped files; JSON; errors."""

import json
import subprocess

from medens.data.__main__ import main
from tests._installed import installed


def test_tables_show_classes_splits_sizes_and_skipped_files(tmp_path, layouts, capsys):
    root = layouts.busi(tmp_path, per_class=5)
    bad = layouts.truncate(layouts.big_jpeg(root / "Dataset_BUSI_with_GT" / "benign" / "benign (7).png"))
    assert main(["--dataset", "busi", "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[3].split() == ["class", "images", "train", "val", "test"], out
    rows = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in lines[5:9]}
    assert rows["benign"][0] == 5 and sum(rows["benign"][1:]) == 5  # 6 files, one skipped
    assert rows["total"] == [15, 11, 1, 3]  # 70/10/20 of 15, rounded
    assert "16x12" in out
    assert "skipped files: 1" in out and str(bad) in out and "truncated" in out


def test_json_output(tmp_path, layouts, capsys):
    root = layouts.medmnist(tmp_path, counts=(8, 4, 6))
    assert main(["--dataset", "medmnist:breastmnist", "--data-root", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["classes"] == ["malignant", "normal, benign"]
    assert summary["per_split"]["val"] == {"malignant": 2, "normal, benign": 2}
    assert summary["split_method"] == "official"
    assert summary["image_sizes"] == {"28x28": 18}
    assert summary["num_skipped"] == 0


def test_strict_flag_turns_a_corrupt_file_into_an_error(tmp_path, layouts, capsys):
    root = layouts.busi(tmp_path)
    (root / "Dataset_BUSI_with_GT" / "normal" / "normal (1).png").write_bytes(b"")
    assert main(["--dataset", "busi", "--data-root", str(root), "--strict"]) == 1
    assert "normal (1).png" in capsys.readouterr().err


def test_missing_root_exits_1_and_an_unknown_dataset_2_with_the_reason(tmp_path, capsys):
    assert main(["--dataset", "kvasir", "--data-root", str(tmp_path / "absent")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["--dataset", "kvasirr", "--data-root", str(tmp_path)]) == 2  # a usage error
    assert "unknown dataset 'kvasirr'" in capsys.readouterr().err


def test_runs_as_a_module_with_options():
    result = subprocess.run(
        **installed("-m", "medens.data", "--dataset", "synthetic", "--option", "num_images=40",
                    "--option", "image_size=[8, 12]", "--option", "num_classes=4", "--json"),
        capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["per_class"] == {"normal": 10, "benign": 10, "malignant": 10, "cyst": 10}
    assert summary["image_sizes"] == {"12x8": 40}
