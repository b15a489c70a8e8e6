"""The fault catalogue: each fault gives one line, exit 2, and loses nothing done."""

import dataclasses
import errno
import glob
import json
import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from data_prep import builder, frame_index, synthetic, work_files
from data_prep.prep_config import PrepConfig
from mat_effnet.common import faults
from mat_effnet import records
from mat_effnet.training import trainer


def _tree(root, lengths=(5, 6, 7)):
    for cls in ("a", "b"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i, n in enumerate(lengths):
            synthetic.write_video(os.path.join(root, cls, f"vid{i}.avi"),
                                  frame_index.index_frames(n, 48, 64))


def _cfg(root, out, **kw):
    kw.setdefault("videos_per_shard", 2)
    kw.setdefault("flow", "dis")
    return PrepConfig(dataset="folder", data_root=str(root), out_dir=str(out), short_side=32,
                      **kw)


def _shard_bytes(out_dir):
    return {os.path.basename(p): open(p, "rb").read()
            for p in glob.glob(os.path.join(str(out_dir), "*.tfrecord-*")) if ".tmp" not in p}


def _meta(out_dir):
    return json.loads(open(os.path.join(str(out_dir), records.META_FILENAME)).read())


# ---------------------------------------------------------------------------
# best.keras / last.keras are written atomically

def _tiny_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")],
                             name="tiny")
    model.compile("sgd", "mse")
    return model


def test_a_checkpoint_save_that_fails_midway_leaves_the_previous_file(tmp_path, monkeypatch):
    model = _tiny_model()
    path = str(tmp_path / "last.keras")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    model.fit(x, y, epochs=1, verbose=0, callbacks=[trainer.AtomicModelCheckpoint(path)])
    saved = keras.models.load_model(path).get_weights()

    real_save = keras.Model.save

    def torn_save(self, filepath, *a, **kw):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half a zip")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device", filepath)

    monkeypatch.setattr(keras.Model, "save", torn_save)
    model.get_layer("dense").set_weights([w + 1 for w in model.get_layer("dense").get_weights()])
    with pytest.raises(faults.MachineFault) as info:
        model.fit(x, y, epochs=1, verbose=0, callbacks=[trainer.AtomicModelCheckpoint(path)])
    assert faults.machine_errno(info.value) == errno.ENOSPC
    assert str(info.value).startswith(f"{path}: no space left on device")
    monkeypatch.setattr(keras.Model, "save", real_save)
    # The previous checkpoint is whole and unchanged; no temp file is left.
    for a, b in zip(keras.models.load_model(path).get_weights(), saved):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path) == ["last.keras"]


def test_the_standard_callbacks_save_atomically(tmp_path):
    cfg = trainer.TrainConfig.from_flat(stream="spatial", data_dir="d", model_dir=str(tmp_path))
    cbs = trainer._standard_callbacks(cfg, str(tmp_path), 1, "accuracy", custom=True)
    checkpoints = [c for c in cbs if isinstance(c, keras.callbacks.ModelCheckpoint)]
    assert sorted(os.path.basename(c.filepath) for c in checkpoints) == ["best.keras",
                                                                         "last.keras"]
    assert all(isinstance(c, trainer.AtomicModelCheckpoint) for c in checkpoints)


# ---------------------------------------------------------------------------
# Machine errors are recognised in the forms they arrive in

def test_machine_errors_are_recognised_in_each_form():
    enospc = OSError(errno.ENOSPC, "No space left on device", "/o/x.tmp-0123456789ab.keras")
    assert faults.machine_errno(enospc) == errno.ENOSPC
    tf_full = tf.errors.ResourceExhaustedError(None, None, "/o/.work/v.tfrecord; No space left on device")
    assert faults.machine_errno(tf_full) == errno.ENOSPC
    assert faults.machine_errno(tf.errors.PermissionDeniedError(None, None, "/o/x")) == errno.EACCES
    try:
        try:
            raise enospc
        except OSError as e:
            raise RuntimeError("wrapped") from e
    except RuntimeError as wrapped:
        assert faults.machine_errno(wrapped) == errno.ENOSPC
    assert faults.machine_errno(ValueError("No space left on device")) is None
    line = faults.describe(enospc)
    # The final name, not the temp one; how much was free; that a rerun resumes.
    assert line.startswith("/o/x: no space left on device (") and "MiB free on /" in line
    assert "run the same command again" in line and "\n" not in line
    # Reading an input one may not read is the data's fault, not the machine's.
    denied = OSError(errno.EACCES, "Permission denied", "/in/v.avi")
    assert faults.machine_fault(denied, out_dir="/o") is None
    assert faults.machine_fault(OSError(errno.EACCES, "Permission denied", "/o/.work/x"),
                                out_dir="/o")
    assert faults.is_machine_reason("ResourceExhaustedError: /o/.work/train/v.tfrecord.tmp-1; "
                                    "No space left on device")
    assert faults.is_machine_reason("OSError: [Errno 28] No space left on device")
    assert not faults.is_machine_reason("VideoError: cannot decode")
    assert not faults.is_machine_reason("PermissionError: [Errno 13] Permission denied: '/in/v.avi'")
    assert faults.is_machine_reason("PermissionError: [Errno 13] Permission denied: '/o/f/x.jpg'",
                                    "/o")


@pytest.mark.parametrize("error,where", [
    (MemoryError(), "the host"),
    (tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor with shape"
                                      "[64,256,320,2]"), "the accelerator"),
    (tf.errors.ResourceExhaustedError(None, None, "Out of memory while trying to allocate "
                                      "2147483648 bytes."), "the accelerator"),
    (tf.errors.ResourceExhaustedError(None, None, "Graph execution error"), "the accelerator"),
])
def test_out_of_memory_is_reported_as_out_of_memory_never_a_full_disk(error, where):
    assert faults.machine_errno(error) == errno.ENOMEM
    fault = faults.machine_fault(error, inputs=["/in/v.avi"], memory_advice="lower --flow_batch")
    line = str(fault)
    assert line.startswith(f"/in/v.avi: out of memory on {where}; lower --flow_batch and run "
                           "the same command again"), line
    assert "space" not in line and "\n" not in line
    assert faults.is_machine_reason(f"{type(error).__name__}: {error}")


def test_the_policy_says_whose_fault_each_error_is(tmp_path, monkeypatch):
    out, video = str(tmp_path / "o"), str(tmp_path / "in" / "v.avi")
    item = [ValueError("bad header"), OSError(errno.ENOENT, "No such file", video),
            OSError(errno.EACCES, "Permission denied", video)]
    for e in item:  # the item's: recorded against it
        assert faults.machine_fault(e, out_dir=out, inputs=[video]) is None, e
    machine = [OSError(errno.ENOSPC, "No space left on device", video),
               OSError(errno.EIO, "Input/output error", video),  # an input on a failing disk
               OSError(errno.ESTALE, "Stale file handle", video),
               OSError(errno.EACCES, "Permission denied", os.path.join(out, "x"))]
    for e in machine:
        fault = faults.machine_fault(e, out_dir=out, inputs=[video])
        assert isinstance(fault, faults.MachineFault) and fault.code == e.errno, e
        assert str(fault).startswith(e.filename + ": "), str(fault)
    # A decoder says "cannot open" for a file on a lost mount: the input is looked at.
    real_stat = os.stat

    def stale(path, *a, **k):
        if os.fspath(path) == video:
            raise OSError(errno.ESTALE, "Stale file handle", video)
        return real_stat(path, *a, **k)

    monkeypatch.setattr(os, "stat", stale)
    fault = faults.machine_fault(ValueError("cannot open"), out_dir=out, inputs=[video])
    assert fault.code == errno.ESTALE and str(fault).startswith(f"{video}: stale file handle")


# ---------------------------------------------------------------------------
# Prep onto a disk that fills while a video's work file is written

def _full_disk_for(video_id, kind, monkeypatch):
    """records.write_videos raising a full disk for ``video_id``, once."""
    real = records.write_videos
    hit = []

    def writing(writer, recs, version):
        recs = list(recs)
        if not hit and recs and recs[0].video_id == video_id:
            hit.append(video_id)
            if kind == "tf":
                raise tf.errors.ResourceExhaustedError(None, None, "/x/.work/t.tfrecord.tmp-1; "
                                                       "No space left on device")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(writer, recs, version)

    monkeypatch.setattr(records, "write_videos", writing)
    return hit


@pytest.mark.parametrize("kind", ["oserror", "tf"])
def test_a_full_disk_stops_prep_and_a_rerun_gives_the_clean_dataset(tmp_path, monkeypatch, kind):
    _tree(tmp_path / "v")
    builder.build(_cfg(tmp_path / "v", tmp_path / "clean"))
    out = tmp_path / "full"
    hit = _full_disk_for("b/vid1", kind, monkeypatch)
    with pytest.raises(faults.MachineFault) as info:
        builder.build(_cfg(tmp_path / "v", out))
    assert hit == ["b/vid1"]
    line = str(info.value)
    assert "no space left on device" in line and "iB free" in line and "\n" not in line
    assert "run the same command again" in line
    # Not the video's failure: nothing marks it failed, the dataset is not finished.
    assert not glob.glob(str(out / ".work" / "*" / "*.failed.json"))
    assert not os.path.exists(out / records.META_FILENAME)
    monkeypatch.undo()
    builder.build(_cfg(tmp_path / "v", out))
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean")
    assert _meta(out) == _meta(tmp_path / "clean") and _meta(out)["failures"] == []


def test_a_folder_whose_old_run_recorded_full_disks_as_failures_is_repaired(tmp_path,
                                                                         monkeypatch):
    _tree(tmp_path / "v")
    builder.build(_cfg(tmp_path / "v", tmp_path / "clean"))
    out = tmp_path / "old"
    # The code before issue 17: the full disk became the video's failure and
    # its shard was finished without it.
    _full_disk_for("a/vid2", "tf", monkeypatch)
    monkeypatch.setattr(faults, "machine_fault", lambda *a, **k: None)
    monkeypatch.setattr(faults, "is_machine_reason", lambda *a: False)
    old = builder.build(_cfg(tmp_path / "v", out))
    assert [f["video_id"] for f in old["failures"]] == ["a/vid2"]
    assert "ResourceExhaustedError" in old["failures"][0]["reason"]
    monkeypatch.undo()
    builder.build(_cfg(tmp_path / "v", out))
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean")
    assert _meta(out)["failures"] == []


def _mount_tmpfs(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    return r.returncode == 0


def test_cli_on_a_real_full_disk_one_line_exit_2_and_rerun_resumes(tmp_path):
    disk = tmp_path / "disk"
    # Three work files of ~13 KB (4 KiB pages; the lock takes one) do not fit: the disk fills
    # while a video's work file is written, before any shard.
    if not _mount_tmpfs(disk, "48k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        _tree(tmp_path / "v", lengths=(9, 9, 9))
        args = [sys.executable, "-m", "experiments.prep", "--dataset=folder", "--flow=dis",
                f"--data_root={tmp_path / 'v'}", "--short_side=32", "--videos_per_shard=6"]
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        clean = subprocess.run(args + [f"--out_dir={tmp_path / 'clean'}"], env=env,
                               capture_output=True, text=True, timeout=300)
        assert clean.returncode == 0, clean.stderr
        full = subprocess.run(args + [f"--out_dir={disk / 'o'}"], env=env,
                              capture_output=True, text=True, timeout=300)
        assert full.returncode == 2, full.stderr
        assert "Traceback" not in full.stderr
        errors = [ln for ln in full.stderr.splitlines() if "mat-effnet" in ln or "Error" in ln]
        assert len(errors) == 1, full.stderr
        assert errors[0].startswith("mat-effnet-prep: error: ") and str(disk) in errors[0]
        assert "no space left on device" in errors[0] and "KiB free on " + str(disk) in errors[0]
        assert "/.work/train/" in errors[0] and errors[0].split(": ")[2].endswith((".tfrecord", ".done.json"))
        assert not glob.glob(str(disk / "o" / ".work" / "*" / "*.failed.json"))
        assert len(glob.glob(str(disk / "o" / ".work" / "train" / "*.done.json"))) >= 1
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        again = subprocess.run(args + [f"--out_dir={disk / 'o'}"], env=env,
                               capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert _shard_bytes(disk / "o") == _shard_bytes(tmp_path / "clean")
        assert _meta(disk / "o")["failures"] == []
    finally:
        subprocess.run(["umount", str(disk)])


# ---------------------------------------------------------------------------
# One writer per output folder

def test_a_second_prep_finds_the_lock_and_a_stale_one_is_taken_over(tmp_path):
    from data_prep import out_lock

    out = str(tmp_path / "o")
    with out_lock.holding(out):
        held = json.loads((tmp_path / "o" / out_lock.LOCK_FILENAME).read_text())
        assert held["pid"] == os.getpid() and held["host"]
        with pytest.raises(out_lock.LockedError, match=r"locked by another prep \(pid \d+ on "):
            with out_lock.holding(out):
                pass
    assert not os.path.exists(tmp_path / "o" / out_lock.LOCK_FILENAME)
    # A lock left by a killed run (its process gone) is taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "o" / out_lock.LOCK_FILENAME).write_text(
        json.dumps({"pid": dead.pid, "host": held["host"], "started": 0}))
    with out_lock.holding(out):
        assert json.loads((tmp_path / "o" / out_lock.LOCK_FILENAME).read_text())["pid"] == os.getpid()
    # Another host's lock cannot be judged from here: held.
    (tmp_path / "o" / out_lock.LOCK_FILENAME).write_text(
        json.dumps({"pid": dead.pid, "host": "elsewhere", "started": 0}))
    with pytest.raises(out_lock.LockedError, match="on elsewhere"):
        with out_lock.holding(out):
            pass


def test_wait_waits_for_the_holder(tmp_path):
    import threading

    from data_prep import out_lock

    out, order = str(tmp_path / "o"), []
    release = threading.Event()

    def first():
        with out_lock.holding(out):
            order.append("first in")
            release.wait(5)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    while not order:
        pass
    threading.Timer(0.3, release.set).start()
    with out_lock.holding(out, wait=True, poll_seconds=0.05):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]


def test_cli_second_prep_stops_with_one_line_before_importing_tensorflow(tmp_path):
    from data_prep import out_lock

    _tree(tmp_path / "v", lengths=(5,))
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / out_lock.LOCK_FILENAME).write_text(
        json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(), "started": 0}))
    # -X importtime lists every module imported: tensorflow must not be one.
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "experiments.prep",
                        "--dataset=folder", f"--data_root={tmp_path / 'v'}",
                        f"--out_dir={tmp_path / 'o'}"], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if not ln.startswith("import time:")]
    assert len(lines) == 1 and lines[0].startswith("mat-effnet-prep: error: ") and "lock" in lines[0]
    assert str(os.getpid()) in lines[0] and "--wait" in lines[0]
    assert not any(ln.rstrip().endswith("| tensorflow") for ln in r.stderr.splitlines())


# ---------------------------------------------------------------------------
# Data integrity: sizes and checksums recorded, checked before the first step,
# mat-effnet-verify, and read errors named

@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """A tiny prepared dataset (RGB only) that the tests copy before damaging it."""
    root = tmp_path_factory.mktemp("integrity")
    synthetic.generate_ucf101_like(str(root / "videos"), videos_per_class=2, num_frames=8,
                                   height=48, width=64, seed=2)
    out = str(root / "data")
    builder.build(PrepConfig(dataset="ucf101", data_root=str(root / "videos"), out_dir=out,
                             flow="none", short_side=40, videos_per_shard=4))
    return out


def _copy(src, tmp_path):
    import shutil

    dst = str(tmp_path / "data")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".work"))
    return dst


def _train_shard(data_dir):
    meta = _meta(data_dir)
    return os.path.join(data_dir, meta["shards"]["train"][0])


def _flip(path, every=97):
    """Flips bytes all through the file (its size unchanged): every read hits one."""
    data = bytearray(open(path, "rb").read())
    for i in range(40, len(data), every):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_prep_records_each_shards_size_and_sha256(small_data):
    import hashlib

    meta = _meta(small_data)
    names = [n for split in meta["shards"].values() for n in split]
    assert sorted(meta["shard_files"]) == sorted(names)
    for name in names:
        path = os.path.join(small_data, name)
        entry = meta["shard_files"][name]
        assert entry["bytes"] == os.path.getsize(path)
        assert entry["sha256"] == hashlib.sha256(open(path, "rb").read()).hexdigest()
        assert entry["index_bytes"] == os.path.getsize(records.index_path(path))


def test_sizes_are_checked_before_the_first_step(small_data, tmp_path, caplog):
    from mat_effnet.records import integrity

    d = _copy(small_data, tmp_path)
    meta = _meta(d)
    integrity.check_split(d, meta, "train")  # sound: no error
    shard = _train_shard(d)
    with open(shard, "r+b") as f:
        f.truncate(os.path.getsize(shard) // 2)
    with pytest.raises(integrity.DataFault, match=rf"^{shard}: \d+ bytes where the metadata "
                                                  r"says \d+ \(truncated\); run mat-effnet-verify"):
        integrity.check_split(d, meta, "train")
    os.remove(shard)
    with pytest.raises(integrity.DataFault, match=rf"^{shard}: this shard file is missing"):
        integrity.check_split(d, meta, "train")
    # A folder prepared before sizes were recorded: said once, skipped.
    old = {k: v for k, v in meta.items() if k != "shard_files"}
    with caplog.at_level("WARNING"):
        integrity.check_split(d, old, "train")
        integrity.check_split(d, old, "test")
    assert sum("prepared before shard sizes" in r.message for r in caplog.records) == 1


def _verify(*args):
    return subprocess.run([sys.executable, "-m", "experiments.verify", *args],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))


def test_verify_reports_sound_and_damaged_datasets(small_data, tmp_path):
    from mat_effnet.records import integrity

    d = _copy(small_data, tmp_path)
    assert integrity.verify(d, decode=True) == []
    shard = _train_shard(d)
    _flip(shard)
    problems = integrity.verify(d)
    assert any(p.startswith(f"{shard}: checksum differs") for p in problems), problems
    corrupted = [p for p in problems if "corrupted record" in p]
    assert len(corrupted) == 1 and corrupted[0].startswith(f"{shard}: ")
    r = _verify(d, "--decode")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{shard}: checksum differs" in r.stdout
    assert "problem(s)" in r.stderr and "--rebuild_damaged" in r.stderr
    clean = _verify(small_data)
    assert clean.returncode == 0 and "ok" in clean.stderr, clean.stderr


def test_verify_stops_on_an_io_error_instead_of_reporting_damage(small_data, tmp_path,
                                                               monkeypatch):
    """Injected: TensorFlow's read of a shard fails as a failing disk makes it fail."""
    from mat_effnet.records import integrity

    d = _copy(small_data, tmp_path)
    shard = _train_shard(d)
    real = records.read_shard

    def failing_disk(path, *a, **k):
        if path == shard:
            raise tf.errors.DataLossError(None, None, f"{shard}; Input/output error")
        return real(path, *a, **k)

    monkeypatch.setattr(records, "read_shard", failing_disk)
    with pytest.raises(tf.errors.DataLossError) as info:
        integrity.verify(d)
    assert faults.machine_errno(info.value) == errno.EIO
    assert faults.describe(info.value).startswith(f"{shard}: input/output error")


def _train_cfg(data_dir, model_dir, **kw):
    base = dict(stream="spatial", data_dir=data_dir, model_dir=str(model_dir), weights=None,
                backbone="resnet18", epochs=1, steps_per_epoch=2, batch_size=2,
                image_size=32, validation_split=None, seed=5, strategy="default", verbose=0)
    base.update(kw)
    return trainer.TrainConfig.from_flat(**base)


def test_train_stops_on_a_truncated_shard_before_the_first_step(small_data, tmp_path):
    from mat_effnet.records import integrity

    d = _copy(small_data, tmp_path)
    shard = _train_shard(d)
    with open(shard, "r+b") as f:  # cut at the last group's start: its index lists it
        f.truncate(int(records.read_index(shard)[-1, 0]))
    with pytest.raises(integrity.DataFault, match=rf"^{shard}: .*\(truncated\)"):
        trainer.train(_train_cfg(d, tmp_path / "m"))
    assert not os.path.exists(tmp_path / "m" / "train_config.json")


def test_only_damaged_bytes_are_reported_as_damaged_data():
    from mat_effnet.records import integrity

    E = tf.errors
    damaged = [E.DataLossError(None, None, "corrupted record at 1234"),
               E.DataLossError(None, None, "truncated record at 99"),
               E.InvalidArgumentError(None, None, "jpeg::Uncompress failed. Invalid JPEG data "
                                      "or crop window. [Op:DecodeJpeg]"),
               E.InvalidArgumentError(None, None, "Unknown image file format. One of JPEG, "
                                      "JPEG XL, PNG, GIF, BMP, WebP required.")]
    assert all(integrity.read_error(e) for e in damaged)
    # A bug or the machine: not damaged data, so training re-raises it with its traceback.
    others = [E.NotFoundError(None, None, "/d/x.tfrecord-00000-of-00001; No such file"),
              E.OutOfRangeError(None, None, "End of sequence"),
              E.InvalidArgumentError(None, None, "Key: rgb_jpeg.  Can't parse serialized "
                                     "Example."),
              E.InvalidArgumentError(None, None, "Feature: flow_x (data type: string) is "
                                     "required but could not be found."),
              E.DataLossError(None, None, "/d/x.tfrecord; Input/output error")]
    assert not any(integrity.read_error(e) for e in others)


def test_a_read_error_while_training_names_the_shard_and_the_video(small_data, tmp_path):
    from mat_effnet.records import integrity

    d = _copy(small_data, tmp_path)
    shard = _train_shard(d)
    _flip(shard)  # same size: passes the size check, fails when read
    with pytest.raises(integrity.DataFault) as info:
        trainer.train(_train_cfg(d, tmp_path / "m"))
    line = str(info.value)
    videos = {g["video_id"] for g in records.read_groups(os.path.join(small_data, _meta(d)["shards"]["train"][0]))}
    assert line.startswith(f"{shard}: ") and line.endswith(f"; run mat-effnet-verify {d}")
    named = line.split(": ")[1]
    assert named in videos or named.startswith("group ") or named.startswith("its first"), line
    assert "corrupted record" in line and "\n" not in line


def test_prep_rebuild_damaged_remakes_only_the_damaged_shards_byte_identical(small_data,
                                                                            tmp_path):
    import shutil

    from mat_effnet.records import integrity

    d = str(tmp_path / "data")
    shutil.copytree(small_data, d)  # with its work folder: the shard summaries
    clean = _shard_bytes(d)
    names = _meta(d)["shards"]["train"]
    flipped, cut, sound = (os.path.join(d, n) for n in names[:3])
    _flip(flipped)
    with open(cut, "r+b") as f:
        f.truncate(100)
    before = os.stat(sound).st_mtime_ns
    cfg = PrepConfig(dataset="ucf101", data_root=os.path.join(os.path.dirname(small_data),
                                                              "videos"),
                     out_dir=d, flow="none", short_side=40, videos_per_shard=4)
    builder.build(cfg)  # a plain rerun trusts its finished shards
    assert _shard_bytes(d) != clean
    builder.build(dataclasses.replace(cfg, rebuild_damaged=True))
    assert _shard_bytes(d) == clean
    assert os.stat(sound).st_mtime_ns == before  # a sound shard is not rewritten
    assert integrity.verify(d) == []


def test_rebuild_damaged_checks_the_videos_before_it_deletes(small_data, tmp_path):
    """A video of a damaged shard is gone: one line naming it, nothing deleted.

    The shard's own summary lists its videos; one entry is pointed at a file
    that does not exist (the source videos are shared by other tests).
    """
    import shutil

    from data_prep import repair

    d = str(tmp_path / "data")
    shutil.copytree(small_data, d)
    names = _meta(d)["shards"]["train"]
    _flip(os.path.join(d, names[0]))
    summary_path = os.path.join(d, ".work", "train", "shard-00000.json")
    summary = json.load(open(summary_path))
    assert summary["file"] == names[0]
    gone = str(tmp_path / "gone" / "v.avi")
    summary["videos"][1]["path"] = gone
    with open(summary_path, "w") as f:
        json.dump(summary, f)
    before = {p: open(p, "rb").read() for p in glob.glob(os.path.join(d, "**"), recursive=True)
              if os.path.isfile(p)}
    cfg = PrepConfig(dataset="ucf101", data_root=os.path.join(os.path.dirname(small_data),
                                                              "videos"),
                     out_dir=d, flow="none", short_side=40, videos_per_shard=4,
                     rebuild_damaged=True)
    with pytest.raises(repair.RepairError) as info:
        builder.build(cfg)
    line = str(info.value)
    assert line.startswith(f"{gone}: cannot be read (No such file or directory); the damaged "
                           f"shard {os.path.join(d, names[0])} ") and "nothing was deleted" in line
    after = {p: open(p, "rb").read() for p in glob.glob(os.path.join(d, "**"), recursive=True)
             if os.path.isfile(p)}
    assert after == before


def _damage_group(shard, g):
    """Flips bytes inside group g's frame records only; returns that video's id."""
    index = records.read_index(shard)
    start = int(index[g, 0] + index[g, 1]) + 40
    end = int(index[g + 1, 0]) if g + 1 < len(index) else os.path.getsize(shard)
    data = bytearray(open(shard, "rb").read())
    for i in range(start, end - 8, 53):
        data[i] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    return [v["video_id"] for v in records.read_groups(shard + ".orig")][g]


def _csv(path):
    import csv

    return list(csv.DictReader(open(path)))


def test_on_corrupt_skip_leaves_the_video_out_counts_and_names_it(small_data, tmp_path):
    import shutil

    from mat_effnet.records import integrity

    d = _copy(small_data, tmp_path)
    shard = _train_shard(d)
    shutil.copy(shard, shard + ".orig")
    video = _damage_group(shard, 1)
    os.remove(shard + ".orig")
    train_videos = sum(len(records.read_index(p)) for p in records.split_files(d, _meta(d), "train"))
    kw = dict(epochs=2, steps_per_epoch=train_videos // 2, batch_size=2)
    # The default stops, naming the video.
    with pytest.raises(integrity.DataFault, match=rf"^{shard}: {video}: corrupted record"):
        trainer.train(_train_cfg(d, tmp_path / "stop", **kw))
    # skip: the run finishes, the video is named and counted from epoch 1.
    summary = trainer.train(_train_cfg(d, tmp_path / "m", on_corrupt="skip", **kw))
    assert summary["epochs_run"] >= 1 and summary["skipped"] == [video]
    listed = json.load(open(tmp_path / "m" / "skipped_videos.json"))["skipped"]
    assert [(e["shard"], e["video"], e["split"]) for e in listed] == [
        (os.path.basename(shard), video, "train")]
    assert "corrupted record" in listed[0]["problem"]
    rows = _csv(tmp_path / "m" / "training_log.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]  # resumed from the backup: no repeat
    assert float(rows[-1]["skipped"]) == 1.0
    # A sound run carries the column too (CSVLogger fixes its columns at the first write).
    trainer.train(_train_cfg(small_data, tmp_path / "clean", epochs=1))
    assert [float(r["skipped"]) for r in _csv(tmp_path / "clean" / "training_log.csv")] == [0.0]


def test_on_corrupt_skip_leaves_out_the_groups_past_a_truncated_shards_end(small_data, tmp_path):
    d = _copy(small_data, tmp_path)
    shard = _train_shard(d)
    cut = int(records.read_index(shard)[-1, 0])
    with open(shard, "r+b") as f:  # the last group's header is gone with it: named by offset
        f.truncate(cut)
    summary = trainer.train(_train_cfg(d, tmp_path / "m", on_corrupt="skip"))
    assert summary["skipped"] == [f"the group at byte {cut}"]
    (entry,) = json.load(open(tmp_path / "m" / "skipped_videos.json"))["skipped"]
    assert entry["shard"] == os.path.basename(shard) and "past the end" in entry["problem"]
    with pytest.raises(ValueError, match="on_corrupt"):
        _train_cfg(d, tmp_path / "x", on_corrupt="ignore")


# ---------------------------------------------------------------------------
# Videos that decode only in part; rotation

def _garbled_tree(root):
    """Class a: a 100-frame MJPEG avi whose middle 20 % of bytes is garbled; b: a sound one."""
    import random

    for cls in ("a", "b"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        synthetic.write_video(os.path.join(root, cls, "v.avi"), frame_index.index_frames(100, 48, 64))
    path = os.path.join(root, "a", "v.avi")
    data = bytearray(open(path, "rb").read())
    rng = random.Random(0)
    for i in range(int(len(data) * 0.4), int(len(data) * 0.6)):
        data[i] = rng.randrange(256)
    open(path, "wb").write(bytes(data))


def test_a_partly_decodable_video_is_a_warning_or_with_strict_decode_a_failure(tmp_path):
    _garbled_tree(tmp_path / "v")
    meta = builder.build(_cfg(tmp_path / "v", tmp_path / "o", flow="none"))
    assert meta["failures"] == []
    (w,) = meta["warnings"]
    assert w["video_id"] == "a/v" and w["announced"] == 100 and 40 < w["decoded"] < 90
    assert f"decoded {w['decoded']} of the 100 frames" in w["warning"]
    # Decoding went on past the damage (OpenCV alone stops after ~28 frames):
    # the frames after it are a chunk of their own, consecutive inside each.
    assert "frames were skipped at 1 damaged region" in w["warning"]
    groups = [g for n in meta["shards"]["train"] for g in records.read_groups(
        os.path.join(str(tmp_path / "o"), n)) if g["video_id"] == "a/v"]
    chunks = [[frame_index.decode_index(tf.io.decode_jpeg(j).numpy()) for j in g["rgb"]]
              for g in sorted(groups, key=lambda g: g["chunk_index"])]
    assert len(chunks) == 2 and chunks[0][0] == 0 and chunks[1][-1] == 99
    assert chunks[1][0] - chunks[0][-1] > 10  # the jump is between chunks, not inside one
    for c in chunks:
        assert c == list(range(c[0], c[0] + len(c)))
    assert sum(map(len, chunks)) == w["decoded"]
    strict = builder.build(_cfg(tmp_path / "v", tmp_path / "s", flow="none", strict_decode=True))
    assert strict["warnings"] == []
    assert [f["video_id"] for f in strict["failures"]] == ["a/v"]
    assert "of the 100 frames its container announces" in strict["failures"][0]["reason"]
    lenient = builder.build(_cfg(tmp_path / "v", tmp_path / "l", flow="none",
                                 min_decoded_fraction=0.1))
    # Enough frames for the fraction: kept without a failure, and the skip still said.
    (w,) = lenient["warnings"]
    assert lenient["failures"] == [] and "under --min_decoded_fraction" not in w["warning"]
    assert "frames were skipped" in w["warning"]


def _ffmpeg(*args, stdin=None):
    r = subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args], input=stdin,
                       capture_output=True)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    return r.stdout


def _display_rotation(path) -> str:
    r = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-select_streams", "v",
                        str(path)], capture_output=True, text=True)
    return next((ln.split("=", 1)[1] for ln in r.stdout.splitlines()
                 if ln.startswith("rotation=")), "")


@pytest.mark.skipif(not (shutil.which("ffmpeg") and shutil.which("ffprobe")),
                    reason="needs ffmpeg and ffprobe (apt-get install ffmpeg)")
def test_frames_are_decoded_upright_and_the_rotation_is_read(tmp_path):
    """A phone-style mp4: stored 64x48 landscape, a display matrix saying rotate by 90.

    Written by ffmpeg (``-metadata:s:v:0 rotate=90`` on a stream copy, which
    ffprobe shows as a display matrix); decoded frames must be what ffmpeg
    itself shows (it applies the matrix): 48 wide, 64 high, the marked corner
    where the rotation puts it.
    """
    from mat_effnet.ops import video

    n, h, w = 6, 48, 64
    frames = np.zeros((n, h, w, 3), np.uint8)
    frames[:, :16, :16] = 255  # a white top-left corner
    frames[:, -8:, :, 2] = 200  # a blue bottom band
    stored = tmp_path / "stored.mp4"
    _ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", "10", "-i", "-",
            "-c:v", "mpeg4", "-q:v", "2", str(stored), stdin=frames.tobytes())
    phone = tmp_path / "phone.mp4"
    _ffmpeg("-i", str(stored), "-c", "copy", "-metadata:s:v:0", "rotate=90", str(phone))
    assert _display_rotation(phone) in ("90", "-90"), "ffmpeg wrote no display matrix"

    info = video.probe(str(phone))
    assert (info.width, info.height, info.frame_count) == (h, w, n)
    assert info.rotation in (90, 270)
    got = np.stack(list(video.iter_frames(str(phone), 0)))
    assert got.shape == (n, w, h, 3)
    # What ffmpeg shows (it applies the display matrix itself).
    shown = np.frombuffer(_ffmpeg("-i", str(phone), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"),
                          np.uint8).reshape(n, w, h, 3)
    assert np.abs(got.astype(int) - shown).mean() < 2
    # The stored frames turned a quarter turn as ffmpeg turns them: the white
    # corner and the blue band moved with the picture.
    k = 1 if shown[0, -8:, :8].mean() > 200 else -1
    turned = np.rot90(frames, k=k, axes=(1, 2))
    assert np.abs(got.astype(int) - turned).mean() < 4
    corner = (slice(-16, None), slice(None, 16)) if k == 1 else (slice(None, 16), slice(-16, None))
    assert got[0][corner].mean() > 200


# ---------------------------------------------------------------------------
# Every binary: a machine error is one line and exit 2 (mat_effnet.common.cli)

def test_the_cli_wrapper_gives_one_line_for_a_machine_error(monkeypatch, capsys):
    from mat_effnet.common import cli

    def main(argv):
        raise tf.errors.ResourceExhaustedError(None, None, "/o/scores.npz; No space left on device")

    monkeypatch.setattr(sys, "argv", ["mat-effnet-x"])
    with pytest.raises(SystemExit) as info:
        cli.run(main, "mat-effnet-x", uses_tensorflow=False)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mat-effnet-x: error: /o/scores.npz: no space")
    # A bug keeps its traceback.
    monkeypatch.setattr(sys, "argv", ["mat-effnet-x"])
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda argv: 1 / 0, "mat-effnet-x", uses_tensorflow=False)


def test_train_on_a_full_disk_one_line_exit_2_no_torn_model(small_data, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "400k"):  # room for the logs, not for a model
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        args = [sys.executable, "-m", "experiments.train", f"--data_dir={small_data}",
                f"--model_dir={disk / 'm'}", "--stream=spatial", "--backbone=resnet18",
                "--weights=none", "--epochs=1", "--steps_per_epoch=2", "--batch_size=2",
                "--image_size=32", "--strategy=default", "--verbose=0"]
        env = dict(os.environ, PYTHONPATH=os.getcwd())
        full = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert full.returncode == 2, full.stderr[-3000:]
        assert "Traceback" not in full.stderr
        lines = [ln for ln in full.stderr.splitlines() if ln.startswith("mat-effnet-train:")]
        assert len(lines) == 1 and "no space left on device" in lines[0], full.stderr[-3000:]
        assert str(disk) in lines[0] and "run the same command again" in lines[0]
        # No torn model file under a final name.
        for name in ("best.keras", "last.keras", "model.keras"):
            p = disk / "m" / name
            assert not p.exists() or keras.models.load_model(str(p)) is not None
        # (The rerun resuming from its backup is BackupAndRestore's, tested with kills
        # in test_end_to_end; it is not repeated here to keep CI short.)
    finally:
        subprocess.run(["umount", str(disk)])


def test_a_worker_killed_for_memory_stops_the_run_and_marks_nothing(tmp_path):
    """Injected: the worker kills itself with SIGKILL, as the kernel's OOM killer does."""
    from data_prep import watchdog
    from tests import fault_helpers

    _tree(tmp_path / "v", lengths=(5,))
    synthetic.write_video(str(tmp_path / "v" / "a" / "oom.avi"), frame_index.index_frames(5, 48, 64))
    cfg = _cfg(tmp_path / "v", tmp_path / "o", flow="none", split_file=None)
    layout, plans = builder.prepare(cfg)
    tasks = [work_files.Task(e, cfg, work_files.work_dir(cfg.out_dir, split))
             for split, plan in plans.items() for shard in plan for e in shard]
    with pytest.raises(faults.MachineFault) as info:
        list(watchdog.run(tasks, 1, timeout_s=60, fn=fault_helpers.oom_killed_process_video))
    assert str(info.value).startswith(str(tmp_path / "v" / "a" / "oom.avi") + ": its worker "
                                      "was killed (SIGKILL: out of memory?); lower --flow_batch")
    assert not glob.glob(str(tmp_path / "o" / ".work" / "*" / "*.failed.json"))
    assert faults.is_machine_reason("worker died (exit code -9)")


def test_a_hung_decoder_is_killed_and_the_video_listed_as_failed(tmp_path):
    from data_prep import watchdog
    from tests import fault_helpers

    _tree(tmp_path / "v", lengths=(5,))
    synthetic.write_video(str(tmp_path / "v" / "a" / "hang.avi"), frame_index.index_frames(5, 48, 64))
    cfg = _cfg(tmp_path / "v", tmp_path / "o", flow="none", split_file=None)
    layout, plans = builder.prepare(cfg)
    tasks = [work_files.Task(e, cfg, work_files.work_dir(cfg.out_dir, split))
             for split, plan in plans.items() for shard in plan for e in shard]
    results = {r["video_id"]: r for r in watchdog.run(tasks, 2, timeout_s=10,
                                                       fn=fault_helpers.sleepy_process_video)}
    assert results["a/hang"]["status"] == "failed"
    assert "timed out" in results["a/hang"]["reason"] and "--video_timeout_s=10s" in results["a/hang"]["reason"]
    assert {v: r["status"] for v, r in results.items() if v != "a/hang"} == {"a/vid0": "done",
                                                                            "b/vid0": "done"}
