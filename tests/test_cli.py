"""mat_effnet.common.cli: one error format and exit code, and a quiet start."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env=None, **kw):
    full_env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    full_env.update(env or {})
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env=full_env, **kw)


def test_library_errors_become_one_line_and_exit_2(tmp_path):
    r = _run(["-m", "experiments.train", "--stream=spatial", f"--data_dir={tmp_path}/none",
              f"--model_dir={tmp_path}/m", "--batch_size=0"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "mat-effnet-train: error: --batch_size=0: must be >= 1"]


def test_tensorflow_start_up_chatter_stays_off_unless_asked(tmp_path):
    args = ["-m", "experiments.train", "--stream=spatial", f"--data_dir={tmp_path}/none",
            f"--model_dir={tmp_path}/m"]
    quiet = _run(args)
    assert quiet.returncode == 2
    lines = quiet.stderr.strip().splitlines()
    # TensorFlow was imported (the metadata is read through tf.io.gfile) and
    # yet the only line is ours.
    assert len(lines) == 1 and lines[0].startswith("mat-effnet-train: error: ")
    assert "mat_effnet_meta.json" in lines[0]
    loud = _run(args + ["--verbosity=1"])
    assert loud.returncode == 2 and len(loud.stderr.strip().splitlines()) > 1


def test_a_broken_tensorflow_import_is_not_hidden(tmp_path):
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text(textwrap.dedent("""
        import os
        os.write(2, b"libfake.so: cannot open shared object file\\n")
        raise ImportError("fake tensorflow is broken")
    """))
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from mat_effnet.common import tf_startup
        tf_startup.import_tensorflow_quietly()
    """)
    r = _run(["-c", code])
    assert r.returncode != 0
    assert "libfake.so: cannot open shared object file" in r.stderr
    assert "ImportError: fake tensorflow is broken" in r.stderr
