"""The package stages for a remote Beam runner the way README's Dataflow example does.

``mat-effnet-prep --runner=DataflowRunner -- --setup_file=./setup.py`` makes
Beam build an sdist of this project on the launching machine and pip-install
it on every worker. This builds that sdist in a copy of the source tree with
Beam's own staging function when apache-beam is installed (``python -m build
--no-isolation --sdist`` when `build` is importable, else ``python setup.py
sdist``), else with ``python setup.py sdist``, checks what it holds, and
installs it offline into a temporary target as a worker would.
"""

import glob
import os
import shutil
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What never ships: caches, build outputs and the data folders .gitignore lists.
_IGNORE = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", ".pytest_cache", "build",
                                 "dist", "runs", "demo_output", ".whl", "data", "*.tmp-*",
                                 "tests")


def _sdist(src: str, out: str) -> str:
    setup_file = os.path.join(src, "setup.py")
    try:
        from apache_beam.runners.portability.stager import Stager
    except ImportError:
        Stager = None
    if Stager is not None:
        return Stager._build_setup_package(setup_file, out)
    subprocess.run([sys.executable, "setup.py", "sdist", "--dist-dir", out], cwd=src, check=True,
                   capture_output=True, timeout=120)
    (path,) = glob.glob(os.path.join(out, "*.tar.gz"))
    return path


def test_setup_file_sdist_holds_the_package_and_installs_offline(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    out = tmp_path / "dist"
    out.mkdir()
    sdist = _sdist(str(src), str(out))

    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("setup.py", "setup.cfg", "mat_effnet/encoding/encode.py", "data_prep/builder.py",
                   "mat_effnet/ops/tvl1.py", "mat_effnet/records/schema.py",
                   "mat_effnet/common/cli.py", "experiments/prep.py",
                   "mat_effnet/webapp/static/index.html"):
        assert needed in names, needed
    configs = {n for n in names if n.startswith("experiments/configs/") and n.endswith(".cfg")}
    assert configs == {f"experiments/configs/{os.path.basename(p)}"
                       for p in glob.glob(os.path.join(ROOT, "experiments", "configs", "*.cfg"))}
    assert configs

    # As a worker installs it; --no-index: offline, nothing is fetched.
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                        "--no-build-isolation", "--disable-pip-version-check", "--quiet",
                        "--target", str(target), sdist],
                       capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert os.path.isfile(target / "mat_effnet" / "encoding" / "encode.py")
    assert os.path.isfile(target / "mat_effnet" / "webapp" / "static" / "index.html")
    assert len(glob.glob(str(target / "experiments" / "configs" / "*.cfg"))) == len(configs)
    # The installed copy is the one imported (from outside the source tree).
    env = dict(os.environ, PYTHONPATH=str(target))
    r = subprocess.run([sys.executable, "-c", "import mat_effnet.encoding.encode as e, "
                        "mat_effnet.records; print(e.__file__); print(e.EncodeSettings().flow)"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(target / "mat_effnet" / "encoding" / "encode.py"), "tvl1"]
