"""Tests for data_prep.synthetic: video writing, index frames, the UCF101-like set."""

import os

import cv2
import numpy as np
import pytest

from data_prep import synthetic
from mat_effnet.ops import video
from data_prep.frame_index import MAX_INDEX_FRAMES, decode_index, index_frames
from data_prep.synthetic import CLASSES, generate_ucf101_like, write_video


# ---------------------------------------------------------------------------
# write_video


def test_write_video_counts_and_leaves_only_the_target(tmp_path):
    path = tmp_path / "clip.avi"
    written = write_video(str(path), (f for f in index_frames(7)), fps=12.0)
    assert written == 7
    assert os.listdir(tmp_path) == ["clip.avi"]  # no temporary file left behind
    info = video.probe(str(path))
    assert (info.fps, info.width, info.height, info.frame_count) == (12.0, 80, 64, 7)


def test_write_video_accepts_gray_frames(tmp_path):
    path = str(tmp_path / "gray.mp4")
    assert write_video(path, [np.full((32, 48), 90, np.uint8)] * 3) == 3
    frames = list(video.iter_frames(path, short_side=0))
    assert len(frames) == 3
    assert abs(float(frames[0].mean()) - 90) < 3


def test_write_video_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        write_video(str(tmp_path / "clip.mkv"), index_frames(2))
    assert os.listdir(tmp_path) == []


def test_write_video_rejects_empty_and_bad_frames(tmp_path):
    with pytest.raises(ValueError):
        write_video(str(tmp_path / "a.avi"), [])
    with pytest.raises(ValueError):
        write_video(str(tmp_path / "b.avi"), [np.zeros((8, 8, 3), np.float32)])
    assert os.listdir(tmp_path) == []


def test_failed_write_keeps_previous_file(tmp_path):
    path = tmp_path / "clip.avi"
    write_video(str(path), index_frames(5))
    before = path.read_bytes()
    frames = index_frames(3) + [np.zeros((10, 10, 3), np.uint8)]  # size changes mid-stream
    with pytest.raises(ValueError, match="size"):
        write_video(str(path), frames)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["clip.avi"]


# ---------------------------------------------------------------------------
# index frames


def test_index_frames_decode_exactly():
    frames = index_frames(50, 64, 80)
    assert len(frames) == 50
    assert all(f.shape == (64, 80, 3) and f.dtype == np.uint8 for f in frames)
    assert [decode_index(f) for f in frames] == list(range(50))
    # Distinct frames really differ in pixels, not only in decoded value.
    assert not np.array_equal(frames[1], frames[2])


def test_index_survives_resize_and_gray():
    for i, frame in zip([0, 1, 1234, 4095], [index_frames(4096, 48, 64)[k] for k in (0, 1, 1234, 4095)]):
        small = cv2.resize(frame, (16, 12), interpolation=cv2.INTER_AREA)
        big = cv2.resize(frame, (200, 150), interpolation=cv2.INTER_LINEAR)
        assert decode_index(small) == i
        assert decode_index(big) == i
        assert decode_index(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)) == i


def test_index_frames_limits():
    assert MAX_INDEX_FRAMES == 4096
    with pytest.raises(ValueError):
        index_frames(4097)
    with pytest.raises(ValueError):
        index_frames(3, height=4, width=80)


# ---------------------------------------------------------------------------
# UCF101-like data set


def _read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ucf"))
    summary = generate_ucf101_like(root, videos_per_class=4, num_frames=12, height=60, width=80, seed=3)
    return root, summary


def test_layout_and_split_files(small_set):
    root, summary = small_set
    assert len(CLASSES) == len(set(CLASSES)) == 6
    assert CLASSES == sorted(CLASSES)
    assert summary["classes"] == CLASSES
    assert (summary["num_videos"], summary["train"], summary["test"]) == (24, 12, 12)
    assert sorted(os.listdir(root)) == ["UCF-101", "ucfTrainTestlist"]
    assert sorted(os.listdir(os.path.join(root, "UCF-101"))) == CLASSES
    assert sorted(os.listdir(os.path.join(root, "ucfTrainTestlist"))) == [
        "classInd.txt", "testlist01.txt", "trainlist01.txt"]

    for cls in CLASSES:
        names = sorted(os.listdir(os.path.join(root, "UCF-101", cls)))
        assert names == [f"v_{cls}_g01_c01.avi", f"v_{cls}_g01_c02.avi",
                         f"v_{cls}_g02_c01.avi", f"v_{cls}_g02_c02.avi"]

    split = os.path.join(root, "ucfTrainTestlist")
    class_ind = _read_lines(os.path.join(split, "classInd.txt"))
    assert class_ind == [f"{i} {c}" for i, c in enumerate(CLASSES, start=1)]
    label_of = {c: i for i, c in enumerate(CLASSES, start=1)}

    train = _read_lines(os.path.join(split, "trainlist01.txt"))
    test = _read_lines(os.path.join(split, "testlist01.txt"))
    assert len(train) == 12 and len(test) == 12
    train_paths = []
    for line in train:
        rel, label = line.split(" ")
        cls = rel.split("/")[0]
        assert int(label) == label_of[cls]  # 1-based
        assert rel.startswith(f"{cls}/v_{cls}_g01_")  # first group trains
        train_paths.append(rel)
    for line in test:
        assert " " not in line  # official testlist has no labels
        cls = line.split("/")[0]
        assert line.startswith(f"{cls}/v_{cls}_g02_")  # last group tests
    on_disk = {f"{c}/{n}" for c in CLASSES for n in os.listdir(os.path.join(root, "UCF-101", c))}
    assert set(train_paths) | set(test) == on_disk
    assert not set(train_paths) & set(test)


def test_videos_have_requested_shape(small_set):
    root, _ = small_set
    path = os.path.join(root, "UCF-101", "PurpleCrossSpin", "v_PurpleCrossSpin_g02_c01.avi")
    info = video.probe(path)
    assert (info.width, info.height, info.frame_count, info.fps) == (80, 60, 12, 25.0)
    assert len(list(video.iter_frames(path, short_side=0))) == 12


def test_deterministic_for_a_seed(small_set, tmp_path):
    root, _ = small_set
    again = str(tmp_path / "again")
    other = str(tmp_path / "other")
    generate_ucf101_like(again, videos_per_class=4, num_frames=12, height=60, width=80, seed=3)
    generate_ucf101_like(other, videos_per_class=4, num_frames=12, height=60, width=80, seed=4)
    rel = os.path.join("UCF-101", "RedSquareDown", "v_RedSquareDown_g01_c02.avi")
    frames = [np.stack(list(video.iter_frames(os.path.join(r, rel), short_side=0))) for r in (root, again, other)]
    np.testing.assert_array_equal(frames[0], frames[1])
    assert np.abs(frames[0].astype(int) - frames[2]).mean() > 5
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        assert _read_lines(os.path.join(root, "ucfTrainTestlist", name)) == \
            _read_lines(os.path.join(again, "ucfTrainTestlist", name))


def test_default_split_is_by_group(tmp_path):
    # Defaults: 10 videos -> 5 groups of 2 clips; round(0.7 * 5) = 4 groups train.
    summary = generate_ucf101_like(str(tmp_path), num_frames=2, height=24, width=32)
    assert summary["per_class"] == {c: {"train": 8, "test": 2} for c in CLASSES}
    split = tmp_path / "ucfTrainTestlist"
    train_groups = {line.split("_g")[1][:2] for line in _read_lines(split / "trainlist01.txt")}
    test_groups = {line.split("_g")[1][:2] for line in _read_lines(split / "testlist01.txt")}
    assert train_groups == {"01", "02", "03", "04"} and test_groups == {"05"}


# ---------------------------------------------------------------------------
# class content: motion and appearance really carry the labels


def _object_masks(frames, colour):
    """Boolean masks of the object's pixels, found by its saturated colour."""
    f = np.stack(frames).astype(int)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    if colour == "red":
        return (r - np.maximum(g, b)) > 80
    if colour == "green":
        return (g - np.maximum(r, b)) > 50
    if colour == "blue":
        return (b - np.maximum(r, g)) > 80
    return (np.minimum(r, b) - g) > 60  # purple


def _render(cls, seed=0, num_frames=24):
    return synthetic.render_clip(cls, np.random.default_rng(seed), num_frames, 120, 160)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_square_moves_in_its_direction(seed):
    for cls, axis in (("RedSquareRight", 1), ("RedSquareDown", 0), ("BlueSquareRight", 1)):
        frames = _render(cls, seed)
        masks = _object_masks(frames, "blue" if cls.startswith("Blue") else "red")
        assert all(m.sum() > 50 for m in masks)  # visible in every frame
        pos = np.array([np.nonzero(m)[axis].mean() for m in masks])
        other = np.array([np.nonzero(m)[1 - axis].mean() for m in masks])
        steps = np.diff(pos)
        assert np.all(steps > 0.5)  # a few pixels per frame, every frame
        assert pos[-1] - pos[0] > 30
        assert abs(other[-1] - other[0]) < 10  # only a slight drift across
        sizes = [m.sum() for m in masks]
        assert max(sizes) / min(sizes) < 1.3  # translation, not zoom


@pytest.mark.parametrize("seed", [0, 1])
def test_cross_grows_or_spins(seed):
    grow = _object_masks(_render("PurpleCrossGrow", seed), "purple")
    areas = grow.sum(axis=(1, 2))
    assert np.all(np.diff(areas) > 0) and areas[-1] > 4 * areas[0]
    spin = _object_masks(_render("PurpleCrossSpin", seed), "purple")
    areas = spin.sum(axis=(1, 2))
    assert areas.max() / areas.min() < 1.3
    centroids = np.array([[np.nonzero(m)[0].mean(), np.nonzero(m)[1].mean()] for m in spin])
    assert np.abs(centroids - centroids[0]).max() < 1.5  # rotates in place
    overlap = (spin[0] & spin[3]).sum() / (spin[0] | spin[3]).sum()
    assert overlap < 0.8  # the shape really turned


def test_colour_classes_differ_only_in_hue():
    # The three rightward squares must look alike to grayscale optical flow:
    # similar luma, all clearly darker than the background.
    lumas, backgrounds = [], []
    for cls, colour in (("RedSquareRight", "red"), ("GreenSquareRight", "green"), ("BlueSquareRight", "blue")):
        frames = _render(cls, 5, 4)
        masks = _object_masks(frames, colour)
        gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]).astype(float)
        lumas.append(gray[masks].mean())
        backgrounds.append(gray[~masks].mean())
    assert max(lumas) - min(lumas) < 30
    assert min(backgrounds) - max(lumas) > 40


def test_motion_pairs_are_the_classes_only_motion_tells_apart():
    assert synthetic.motion_pairs() == [("PurpleCrossGrow", "PurpleCrossSpin"),
                                        ("RedSquareDown", "RedSquareRight")]
