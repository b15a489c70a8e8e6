"""Tests for data_prep.layouts: each dataset reader on small synthetic trees.

Videos are empty files: layout readers only look at names and existence.
"""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from data_prep import datasets
from data_prep.datasets import load_layout
from data_prep.layouts import Failure, LayoutError, VideoEntry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


def write(path, text, crlf=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = text.replace("\n", "\r\n") if crlf else text
    with open(path, "wb") as f:
        f.write(data.encode("utf-8"))


def ids(entries):
    return [(e.video_id, e.label, e.class_name, e.split) for e in entries]


# ---------------------------------------------------------------- UCF101

UCF_CLASSES = ["ApplyEyeMakeup", "Archery", "BabyCrawling"]


def ucf_video(c, g):
    return f"{c}/v_{c}_g{g:02d}_c01.avi"


def make_ucf(base):
    vids = base / "UCF-101"
    for c in UCF_CLASSES:
        for g in (1, 8):
            touch(str(vids / ucf_video(c, g)))
    lists = base / "ucfTrainTestlist"
    write(str(lists / "classInd.txt"), "1 ApplyEyeMakeup\n2 Archery\n3 BabyCrawling\n", crlf=True)
    write(str(lists / "trainlist01.txt"),
          f"{ucf_video('ApplyEyeMakeup', 1)} 1\n{ucf_video('Archery', 1)} 2 \n"
          f"{ucf_video('BabyCrawling', 1)} 3\n{ucf_video('BabyCrawling', 2)} 3\n"
          "../../etc/passwd 1\n\n", crlf=True)
    write(str(lists / "testlist01.txt"),
          "".join(ucf_video(c, 8) + "\n" for c in UCF_CLASSES) + "/etc/passwd\n", crlf=True)
    write(str(lists / "trainlist02.txt"),
          "".join(f"{ucf_video(c, 8)} {i + 1}\n" for i, c in enumerate(UCF_CLASSES)))
    write(str(lists / "testlist02.txt"), "".join(ucf_video(c, 1) + "\n" for c in UCF_CLASSES))
    return base


def test_ucf101_split1_crlf_labels_and_failures(tmp_path):
    layout = load_layout("ucf101", str(make_ucf(tmp_path)), split=1)
    assert layout.dataset == "ucf101"
    assert layout.classes == UCF_CLASSES
    assert set(layout.splits) == {"train", "test"}
    assert ids(layout.splits["train"]) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", 0, "ApplyEyeMakeup", "train"),
        ("Archery/v_Archery_g01_c01", 1, "Archery", "train"),
        ("BabyCrawling/v_BabyCrawling_g01_c01", 2, "BabyCrawling", "train"),
    ]
    # testlist lines have no label: it comes from the class folder.
    assert ids(layout.splits["test"]) == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", 0, "ApplyEyeMakeup", "test"),
        ("Archery/v_Archery_g08_c01", 1, "Archery", "test"),
        ("BabyCrawling/v_BabyCrawling_g08_c01", 2, "BabyCrawling", "test"),
    ]
    first = layout.splits["train"][0]
    assert first.path == str(tmp_path / "UCF-101" / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi")
    assert os.path.isabs(first.path)
    assert layout.failures == [
        Failure("BabyCrawling/v_BabyCrawling_g02_c01",
                str(tmp_path / "UCF-101" / "BabyCrawling" / "v_BabyCrawling_g02_c01.avi"),
                "listed in trainlist01.txt but missing"),
        Failure("../../etc/passwd", "../../etc/passwd", "path escapes data root"),
        Failure("/etc/passwd", "/etc/passwd", "path escapes data root"),
    ]


def test_ucf101_split2_is_read_from_its_own_lists(tmp_path):
    layout = load_layout("ucf101", str(make_ucf(tmp_path)), split=2)
    assert [e.video_id for e in layout.splits["train"]] == [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", "Archery/v_Archery_g08_c01",
        "BabyCrawling/v_BabyCrawling_g08_c01"]
    assert [e.label for e in layout.splits["train"]] == [0, 1, 2]
    assert [e.video_id for e in layout.splits["test"]] == [
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01", "Archery/v_Archery_g01_c01",
        "BabyCrawling/v_BabyCrawling_g01_c01"]
    assert layout.failures == []


def test_ucf101_accepts_the_ucf101_folder_itself(tmp_path):
    make_ucf(tmp_path)
    from_parent = load_layout("ucf101", str(tmp_path), split=2)
    from_videos = load_layout("ucf101", str(tmp_path / "UCF-101"), split=2)
    assert from_videos == from_parent


def test_ucf101_label_mismatch_unknown_class_and_duplicates(tmp_path):
    make_ucf(tmp_path)
    lists = tmp_path / "ucfTrainTestlist"
    write(str(lists / "trainlist03.txt"),
          f"{ucf_video('ApplyEyeMakeup', 1)} 2\n"   # wrong label for the folder
          "Bowling/v_Bowling_g01_c01.avi 4\n"      # class not in classInd
          f"{ucf_video('Archery', 1)} 2\n")
    write(str(lists / "testlist03.txt"), f"{ucf_video('Archery', 1)}\n{ucf_video('Archery', 8)}\n")
    layout = load_layout("ucf101", str(tmp_path), split=3)
    assert [e.video_id for e in layout.splits["train"]] == ["Archery/v_Archery_g01_c01"]
    assert [e.video_id for e in layout.splits["test"]] == ["Archery/v_Archery_g08_c01"]
    assert [(f.video_id, f.reason) for f in layout.failures] == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01",
         "label 2 in trainlist03.txt line 1 disagrees with class folder 'ApplyEyeMakeup'"),
        ("Bowling/v_Bowling_g01_c01", "unknown class 'Bowling' in trainlist03.txt line 2"),
        ("Archery/v_Archery_g01_c01", "listed again in testlist03.txt (first in trainlist03.txt)"),
    ]


def test_ucf101_layout_errors(tmp_path):
    make_ucf(tmp_path / "ucf")
    with pytest.raises(LayoutError, match=r"ucf101 split 3 not found: expected .*trainlist03\.txt"):
        load_layout("ucf101", str(tmp_path / "ucf"), split=3)
    make_hmdb(tmp_path / "hmdb")
    with pytest.raises(LayoutError, match=r"ucf101 layout not found under .*hmdb: expected UCF-101/ "
                                          r"and ucfTrainTestlist/classInd\.txt"):
        load_layout("ucf101", str(tmp_path / "hmdb"))
    # Lists present but no class folders beside them.
    write(str(tmp_path / "lists_only" / "ucfTrainTestlist" / "classInd.txt"), "1 Archery\n")
    with pytest.raises(LayoutError, match=r"ucf101 videos not found under .*lists_only"):
        load_layout("ucf101", str(tmp_path / "lists_only"))
    # Every listed file missing: zero videos is an error, not an empty layout.
    for c in UCF_CLASSES:
        for g in (1, 8):
            os.remove(str(tmp_path / "ucf" / "UCF-101" / ucf_video(c, g)))
    with pytest.raises(LayoutError, match=r"ucf101 layout under .* has no usable videos \(6 listed"):
        load_layout("ucf101", str(tmp_path / "ucf"), split=2)


# ---------------------------------------------------------------- HMDB51


def make_hmdb(base, nested="hmdb51_org"):
    vroot = base / nested if nested else base
    names = {"brush_hair": ["a1.avi", "a2.avi", "a3.avi", "a4.avi"],
             "cartwheel": ["b1.avi", "b2.avi", "b_#3_(x).avi"]}
    for c, files in names.items():
        for f in files:
            touch(str(vroot / c / f))
    splits = base / "testTrainMulti_7030_splits"
    # Trailing spaces after the flag are how the official files are written.
    write(str(splits / "brush_hair_test_split1.txt"),
          "a1.avi 1 \na2.avi 2 \na3.avi 0 \na4.avi 1 \na9.avi 1 \n../../../etc/passwd 2 \n", crlf=True)
    write(str(splits / "cartwheel_test_split1.txt"),
          "b1.avi 2 \nb2.avi 1 \nb_#3_(x).avi 1 \nb1.avi 7 \n../brush_hair/a3.avi 2 \n")
    write(str(splits / "brush_hair_test_split2.txt"), "a3.avi 1 \na4.avi 2 \n")
    write(str(splits / "cartwheel_test_split2.txt"), "b1.avi 1 \nb2.avi 0 \n")
    return base


def test_hmdb51_flags_trailing_spaces_and_failures(tmp_path):
    make_hmdb(tmp_path)
    layout = load_layout("hmdb51", str(tmp_path), split=1)
    assert layout.classes == ["brush_hair", "cartwheel"]
    assert ids(layout.splits["train"]) == [
        ("brush_hair/a1", 0, "brush_hair", "train"),
        ("brush_hair/a4", 0, "brush_hair", "train"),
        ("cartwheel/b2", 1, "cartwheel", "train"),
        ("cartwheel/b_#3_(x)", 1, "cartwheel", "train"),
    ]
    assert ids(layout.splits["test"]) == [
        ("brush_hair/a2", 0, "brush_hair", "test"),
        ("cartwheel/b1", 1, "cartwheel", "test"),
    ]
    assert layout.splits["test"][0].path == str(tmp_path / "hmdb51_org" / "brush_hair" / "a2.avi")
    # a3 (flag 0) is unused, not a failure.
    assert [(f.video_id, f.reason) for f in layout.failures] == [
        ("brush_hair/a9", "listed in brush_hair_test_split1.txt but missing"),
        ("brush_hair/../../../etc/passwd", "path escapes data root"),
        ("cartwheel/b1", "unexpected flag '7' in cartwheel_test_split1.txt line 4"),
        ("brush_hair/a3", "path leaves class folder 'cartwheel' in cartwheel_test_split1.txt"),
    ]


def test_hmdb51_split2_and_flat_tree(tmp_path):
    make_hmdb(tmp_path, nested=None)
    layout = load_layout("hmdb51", str(tmp_path), split=2)
    assert ids(layout.splits["train"]) == [("brush_hair/a3", 0, "brush_hair", "train"),
                                           ("cartwheel/b1", 1, "cartwheel", "train")]
    assert ids(layout.splits["test"]) == [("brush_hair/a4", 0, "brush_hair", "test")]
    assert layout.splits["test"][0].path == str(tmp_path / "brush_hair" / "a4.avi")
    assert layout.failures == []


def test_hmdb51_layout_errors(tmp_path):
    make_hmdb(tmp_path / "h")
    with pytest.raises(LayoutError, match=r"hmdb51 split 3 not found: expected .*_test_split3\.txt"):
        load_layout("hmdb51", str(tmp_path / "h"), split=3)
    make_ucf(tmp_path / "u")
    with pytest.raises(LayoutError, match=r"hmdb51 layout not found under .*u: expected "
                                          r"testTrainMulti_7030_splits/<class>_test_split1\.txt"):
        load_layout("hmdb51", str(tmp_path / "u"))
    write(str(tmp_path / "s" / "testTrainMulti_7030_splits" / "golf_test_split1.txt"), "x.avi 1\n")
    with pytest.raises(LayoutError, match=r"hmdb51 videos not found under .*: expected <class>/ "
                                          r"folders named after the split files \(e\.g\. golf/\)"):
        load_layout("hmdb51", str(tmp_path / "s"))


# ---------------------------------------------------------------- Kinetics

K_HEADER = "label,youtube_id,time_start,time_end,split\n"


def make_kinetics(base):
    ann = base / "annotations"
    write(str(ann / "train.csv"), K_HEADER +
          "abseiling,-aaa,14.0,24.0,train\n"          # float times
          '"air drumming",bbb,0,10,train\n'            # quoted label with a space
          "abseiling,ccc,5,15,train\n"                 # clip never downloaded
          "abseiling,ddd,x,15,train\n")                # corrupt time
    write(str(ann / "validate.csv"), K_HEADER +
          "air drumming,eee,30,40,val\n"
          "zumba,fff,1,11,val\n")                     # label absent from train.csv
    # The original test.csv has no label column: it must not become a split.
    write(str(ann / "test.csv"), "youtube_id,time_start,time_end,split\nggg,0,10,test\n")
    touch(str(base / "-aaa_000014_000024.mp4"))                       # flat
    touch(str(base / "train" / "air_drumming" / "bbb_000000_000010.mp4"))  # split/class folders
    touch(str(base / "val" / "bbb_000000_000010.avi"))  # walked last, but .mp4 is preferred
    touch(str(base / "val" / "eee_000030_000040.mkv"))                # other container
    touch(str(base / "val" / "eee_000030_000040.txt"))                # not a video
    touch(str(base / "ggg_000000_000010.mp4"))
    return base


def test_kinetics400_clips_anywhere_and_missing_counted(tmp_path):
    make_kinetics(tmp_path)
    layout = load_layout("kinetics400", str(tmp_path))
    assert layout.classes == ["abseiling", "air drumming"]
    assert set(layout.splits) == {"train", "validation"}
    assert ids(layout.splits["train"]) == [
        ("-aaa_000014_000024", 0, "abseiling", "train"),
        ("bbb_000000_000010", 1, "air drumming", "train"),
    ]
    assert layout.splits["train"][1].path == str(
        tmp_path / "train" / "air_drumming" / "bbb_000000_000010.mp4")
    assert ids(layout.splits["validation"]) == [("eee_000030_000040", 1, "air drumming", "validation")]
    assert layout.splits["validation"][0].path == str(tmp_path / "val" / "eee_000030_000040.mkv")
    assert layout.failures == [
        Failure("ccc_000005_000015", "ccc_000005_000015.mp4", "clip missing"),
        Failure("train.csv:5", "", "malformed row 5 in train.csv"),
        Failure("fff_000001_000011", "", "unknown class 'zumba' in validate.csv line 3"),
    ]


def test_kinetics400_labelled_test_csv_and_val_csv_name(tmp_path):
    write(str(tmp_path / "train.csv"), K_HEADER + "abseiling,aaa,0,10,train\n")
    write(str(tmp_path / "val.csv"), K_HEADER + "abseiling,bbb,0,10,val\n")
    write(str(tmp_path / "test.csv"), K_HEADER + "abseiling,ccc,0,10,test\n,ddd,0,10,test\n")
    for yid in ("aaa", "bbb", "ccc", "ddd"):
        touch(str(tmp_path / "clips" / f"{yid}_000000_000010.mp4"))
    layout = load_layout("kinetics400", str(tmp_path))
    assert ids(layout.splits["validation"]) == [("bbb_000000_000010", 0, "abseiling", "validation")]
    assert ids(layout.splits["test"]) == [("ccc_000000_000010", 0, "abseiling", "test")]
    assert layout.failures == [Failure("ddd_000000_000010", "", "no label in test.csv line 3")]


def test_kinetics400_layout_errors(tmp_path):
    make_ucf(tmp_path / "u")
    with pytest.raises(LayoutError, match=r"kinetics400 layout not found under .*u: expected train\.csv"):
        load_layout("kinetics400", str(tmp_path / "u"))
    write(str(tmp_path / "h" / "train.csv"), "youtube_id,time_start,time_end\naaa,0,10\n")
    with pytest.raises(LayoutError, match=r"train\.csv: header lacks label"):
        load_layout("kinetics400", str(tmp_path / "h"))
    write(str(tmp_path / "e" / "train.csv"), K_HEADER + "abseiling,aaa,0,10,train\n")
    with pytest.raises(LayoutError, match=r"kinetics400 layout under .*e has no usable videos "
                                          r"\(1 listed entries skipped, first: aaa_000000_000010: clip missing\)"):
        load_layout("kinetics400", str(tmp_path / "e"))


# ---------------------------------------------------------------- folder


def make_folder(base, order):
    files = {"jump": ["j1.mp4", "j2.MP4", "j3.avi", "j4.mkv", "j5.webm"],
             "run": ["r1.mov", "r2.mpg"],
             "sit": ["s1.m4v"]}
    flat = [(c, f) for c, fs in files.items() for f in fs]
    for c, f in (reversed(flat) if order == "reversed" else flat):
        touch(str(base / c / f))
    touch(str(base / "jump" / "notes.txt"))        # not a video
    touch(str(base / "jump" / "._j1.mp4"))         # macOS resource fork
    os.makedirs(str(base / "empty"))               # no videos: not a class
    return base


def summary(layout):
    return {s: ids(v) for s, v in layout.splits.items()}


EXPECTED_FOLDER = {
    # 5 videos * 0.3 = 1.5 -> 2 test (half up), the tail of the sorted list;
    # 2 videos * 0.3 = 0.6 -> 1; a single video stays in train.
    "train": [("jump/j1", 0, "jump", "train"), ("jump/j2", 0, "jump", "train"),
              ("jump/j3", 0, "jump", "train"), ("run/r1", 1, "run", "train"),
              ("sit/s1", 2, "sit", "train")],
    "test": [("jump/j4", 0, "jump", "test"), ("jump/j5", 0, "jump", "test"),
             ("run/r2", 1, "run", "test")],
}


def test_folder_deterministic_split_independent_of_creation_order(tmp_path):
    a = load_layout("folder", str(make_folder(tmp_path / "a", "forward")))
    b = load_layout("folder", str(make_folder(tmp_path / "b", "reversed")))
    assert a.classes == b.classes == ["jump", "run", "sit"]
    assert summary(a) == summary(b) == EXPECTED_FOLDER
    assert a.failures == b.failures == []
    assert a.splits["train"][1].path == str(tmp_path / "a" / "jump" / "j2.MP4")


class _ReversedScandir:
    """os.scandir stand-in returning entries in reverse order, to prove the
    reader sorts instead of trusting directory order."""

    def __init__(self, real, path):
        with real(path) as it:
            self._it = iter(list(it)[::-1])

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._it)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


def test_folder_split_ignores_directory_listing_order(tmp_path, monkeypatch):
    make_folder(tmp_path, "forward")
    real = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": _ReversedScandir(real, path))
    assert summary(load_layout("folder", str(tmp_path))) == EXPECTED_FOLDER


def test_folder_split_ignores_hash_seed(tmp_path):
    make_folder(tmp_path, "forward")
    code = ("import json,sys; from data_prep.datasets import load_layout; "
            "l = load_layout('folder', sys.argv[1], test_fraction=0.5); "
            "print(json.dumps({s: [e.video_id for e in v] for s, v in l.splits.items()}))")
    outs = []
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        res = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env,
                             capture_output=True, text=True, check=True)
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1]
    assert outs[0]["test"] == ["jump/j3", "jump/j4", "jump/j5", "run/r2"]  # 2.5 -> 3 for jump


def test_folder_split_file(tmp_path):
    make_folder(tmp_path, "forward")
    write(str(tmp_path / "mysplit.txt"),
          "# comment\n"
          "jump/j1.mp4 train\r\n"
          "./jump/j2.MP4 TEST\n"
          "run/r1.mov test\n"
          "sit/s1.m4v validation\n"
          "../outside.mp4 train\n"
          "dance/d1.mp4 train\n"
          "jump/j9.mp4 test\n"
          "jump/j3.avi maybe\n")
    layout = load_layout("folder", str(tmp_path), split_file="mysplit.txt")  # found in data_root
    assert layout.classes == ["jump", "run", "sit"]
    assert summary(layout) == {
        "train": [("jump/j1", 0, "jump", "train")],
        "test": [("jump/j2", 0, "jump", "test"), ("run/r1", 1, "run", "test")],
        "validation": [("sit/s1", 2, "sit", "validation")],
    }
    assert layout.failures == [
        Failure("../outside", "../outside.mp4", "path escapes data root"),
        Failure("dance/d1", str(tmp_path / "dance" / "d1.mp4"), "unknown class 'dance' in mysplit.txt line 7"),
        Failure("jump/j9", str(tmp_path / "jump" / "j9.mp4"), "listed in mysplit.txt but missing"),
        Failure("jump/j3.avi maybe", "",
                "malformed line 9 in mysplit.txt: expected '<class>/<file> train|test'"),
    ]
    again = load_layout("folder", str(tmp_path), split_file=str(tmp_path / "mysplit.txt"))
    assert again == layout


def test_folder_layout_errors(tmp_path):
    touch(str(tmp_path / "flat" / "video.mp4"))
    os.makedirs(str(tmp_path / "flat" / "empty_class"))
    with pytest.raises(LayoutError, match=r"folder layout not found under .*flat: expected <class>/<video>"):
        load_layout("folder", str(tmp_path / "flat"))
    make_folder(tmp_path / "ok", "forward")
    with pytest.raises(LayoutError, match=r"--split_file nope\.txt does not exist"):
        load_layout("folder", str(tmp_path / "ok"), split_file="nope.txt")
    for bad in (0.0, 1.0, -0.2, 1.5):
        with pytest.raises(LayoutError, match=r"test_fraction must be strictly between 0 and 1"):
            load_layout("folder", str(tmp_path / "ok"), test_fraction=bad)


# ---------------------------------------------------------------- generic errors


def test_generic_layout_errors_are_one_line(tmp_path):
    make_ucf(tmp_path)
    cases = [
        (dict(dataset="ucf101", data_root=str(tmp_path / "nope")),
         f"--data_root {tmp_path / 'nope'} does not exist"),
        (dict(dataset="ucf101", data_root=str(tmp_path / "ucfTrainTestlist" / "classInd.txt")),
         f"--data_root {tmp_path / 'ucfTrainTestlist' / 'classInd.txt'} is not a directory"),
        (dict(dataset="ucf-101", data_root=str(tmp_path)),
         "unknown dataset 'ucf-101': expected one of ucf101, hmdb51, kinetics400, folder"),
        (dict(dataset="ucf101", data_root=str(tmp_path), split=0), "split must be 1, 2 or 3, got 0"),
        (dict(dataset="hmdb51", data_root=str(tmp_path), split=4), "split must be 1, 2 or 3, got 4"),
        (dict(dataset="ucf101", data_root=str(tmp_path), split=True), "split must be 1, 2 or 3, got True"),
        (dict(dataset="ucf101", data_root=str(tmp_path), split_file="s.txt"),
         "split_file is only used with the folder dataset, not ucf101 (which ships its own split lists)"),
    ]
    for kwargs, message in cases:
        with pytest.raises(LayoutError) as info:
            load_layout(**kwargs)
        assert str(info.value) == message
        assert "\n" not in str(info.value)
    assert issubclass(LayoutError, ValueError)


def test_dataset_name_is_case_insensitive_and_pathlike_root_accepted(tmp_path):
    make_ucf(tmp_path)
    assert load_layout("UCF101", tmp_path, split=2) == load_layout("ucf101", str(tmp_path), split=2)


def test_public_constants_and_frozen_entries():
    assert datasets.DATASETS == ("ucf101", "hmdb51", "kinetics400", "folder")
    entry = VideoEntry("a/b", "/x/a/b.avi", 0, "a", "train")
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.label = 1
