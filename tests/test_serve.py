"""``mat-effnet-serve`` over HTTP and in headless Chromium, against ``mat-effnet-predict``.

One server per module: two tiny streams (ResNet-18 at image size 32, the
quickest backbone to build) trained for one step on the shared generated
dataset (DIS flow, short side 40), started in a
subprocess on a free loopback port with a queue bound of 1 and a 1 MiB
upload limit. Its answers are compared with ``python -m experiments.predict
--json`` on the same files.

The browser tests drive Debian's ``chromium`` through Selenium and
``/usr/bin/chromedriver`` (never a downloaded driver); without them they are
skipped, saying so. ``MAT_EFFNET_SCREENSHOT=PATH`` also copies the result
page's screenshot there (the docs' ``docs/img/serve.png``).
"""

import concurrent.futures
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import import_block

from data_prep import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMEDRIVER = "/usr/bin/chromedriver"
SEGMENTS = 4
WINDOW_S = 1.0
READY_TIMEOUT_S = 300

requests = pytest.importorskip("requests")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _clip(path, cls, frames, seed, height=48, width=64):
    rng = np.random.default_rng(seed)
    synthetic.write_video(path, synthetic.render_clip(cls, rng, num_frames=frames,
                                                       height=height, width=width))
    return path


def _predict_cli(*args):
    r = subprocess.run([sys.executable, "-m", "experiments.predict", *args, "--json",
                        f"--num_segments={SEGMENTS}"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def server(data_dir, tmp_path_factory):
    pytest.importorskip("fastapi")
    from mat_effnet.training import trainer

    root = tmp_path_factory.mktemp("serve")
    models = {}
    for stream in ("spatial", "temporal"):
        cfg = trainer.TrainConfig.from_flat(
            stream=stream, data_dir=data_dir, model_dir=str(root / stream), weights=None,
            epochs=1, steps_per_epoch=1, batch_size=2, image_size=32, flow_length=3,
            backbone="resnet18", bn_momentum=0.9, validation_split=None, seed=3, verbose=0)
        models[stream] = trainer.train(cfg)["model"]
    videos = {
        "clip": _clip(str(root / "a clip.avi"), synthetic.CLASSES[1], 75, seed=2),  # 3 s
        "one_frame": _clip(str(root / "one.avi"), synthetic.CLASSES[0], 1, seed=3),
    }
    (root / "notes.txt").write_text("not a video, just text\n" * 20)
    (root / "empty.mp4").write_bytes(b"")
    (root / "big.avi").write_bytes(np.random.default_rng(0).bytes(3 * 2 ** 19))  # 1.5 MiB
    tmp = root / "server_tmp"
    tmp.mkdir()
    port = _free_port()
    args = [f"--spatial_model={models['spatial']}", f"--temporal_model={models['temporal']}"]
    log = open(root / "server.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.serve", *args, f"--port={port}",
         f"--num_segments={SEGMENTS}", "--max_queue=1", "--max_upload_mb=1",
         f"--window_s={WINDOW_S}", "--warmup_sizes=64x48"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, TMPDIR=str(tmp)))
    # What mat-effnet-predict says on the same files, while the server warms up.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        whole = pool.submit(_predict_cli, f"--video={videos['clip']}", *args)
        windows = pool.submit(_predict_cli, f"--video={videos['clip']}", *args,
                              f"--window_s={WINDOW_S}")
        expected = {"whole": whole.result(), "windows": windows.result()}
    url = f"http://127.0.0.1:{port}"
    while True:
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        try:
            if requests.get(f"{url}/healthz", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        assert time.perf_counter() - t0 < READY_TIMEOUT_S, "the server never became ready"
        time.sleep(0.5)
    yield {"url": url, "proc": proc, "root": root, "videos": videos, "expected": expected,
           "tmp": tmp, "models": models, "log": root / "server.log"}
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    finally:
        log.close()
    # Stopped by SIGTERM, the server removed its uploads folder.
    assert proc.returncode == 0 and not glob.glob(str(tmp / "mat-effnet-serve-*"))


def _post(server, name, path=None, data=None, content=None, **kw):
    if content is None:
        with open(path, "rb") as f:
            content = f.read()
    return requests.post(f"{server['url']}/v1/predict", files={"video": (name, content)},
                         data=data or {}, timeout=120, **kw)


def _same_top(got, want):
    assert [t["class"] for t in got] == [t["class"] for t in want]
    assert [t["index"] for t in got] == [t["index"] for t in want]
    np.testing.assert_allclose([t["probability"] for t in got],
                               [t["probability"] for t in want], atol=1e-4, rtol=0)


def _uploads_left(server):
    return [p for p in glob.glob(str(server["tmp"] / "mat-effnet-serve-*" / "*"))]


# -- over HTTP -------------------------------------------------------------------

def test_health_and_model(server):
    health = requests.get(f"{server['url']}/healthz", timeout=10).json()
    assert health["status"] == "ready" and health["queue"]["max_queue"] == 1
    assert 0 < health["warm_up_s"] < health["ready_s"]
    model = requests.get(f"{server['url']}/v1/model", timeout=10).json()
    want = server["expected"]["whole"]
    assert model["class_names"] == list(synthetic.CLASSES)
    assert model["streams"] == ["spatial", "temporal"]
    assert model["preparation"] == want["preparation"]
    assert model["identities"] == want["models"]
    assert model["preparation"]["temporal"]["flow"] == "dis"


def test_predict_answers_as_mat_effnet_predict(server):
    r = _post(server, "a clip.avi", server["videos"]["clip"])
    assert r.status_code == 200, r.text
    got, want = r.json(), server["expected"]["whole"]
    assert got["video"] == "a clip.avi"
    _same_top(got["top"], want["top"])
    assert len(got["top"]) == 5
    for key in ("frames", "preparation", "models", "class_names_source"):
        assert got[key] == want[key], key
    assert set(got["seconds"]) == set(want["seconds"])
    assert [len(v) for v in got["streams"].values()] == [3, 3]
    assert "windows" not in got and "attention_png" not in got
    assert not _uploads_left(server)


def test_windows_answer_as_the_timeline(server):
    r = _post(server, "a clip.avi", server["videos"]["clip"], data={"window_s": str(WINDOW_S)})
    assert r.status_code == 200, r.text
    got, want = r.json(), server["expected"]["windows"]
    assert got["window_s"] == want["window_s"] and got["stride_s"] == want["stride_s"]
    assert len(got["windows"]) == len(want["windows"]) == 3
    for a, b in zip(got["windows"], want["windows"]):
        assert (a["start_s"], a["end_s"], a["frames"]) == (b["start_s"], b["end_s"], b["frames"])
        _same_top(a["top"], b["top"])
        np.testing.assert_allclose(a["temporal"], b["temporal"], atol=1e-4)
    _same_top(got["top"], server["expected"]["whole"]["top"])  # the whole video's answer too


@pytest.mark.parametrize("name,fixture,status,words", [
    ("notes.txt", "notes.txt", 422, "notes.txt: not a usable video"),
    ("empty.mp4", "empty.mp4", 422, "empty.mp4: empty file"),
    ("one.avi", "one.avi", 422, "a video with 1 frame"),
    ("big.avi", "big.avi", 413, "too large"),
])
def test_bad_input_is_4xx_with_the_reason_and_the_server_goes_on(server, name, fixture,
                                                                 status, words):
    r = _post(server, name, server["root"] / fixture)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert requests.get(f"{server['url']}/healthz", timeout=10).status_code == 200
    assert not _uploads_left(server)


def test_a_form_without_a_video_and_a_bad_option_are_400(server):
    r = requests.post(f"{server['url']}/v1/predict", data={"x": "1"}, timeout=30)
    assert r.status_code == 400 and "'video'" in r.json()["error"]
    r = _post(server, "a.avi", server["videos"]["clip"], data={"window_s": "soon"})
    assert r.status_code == 400 and "window_s=soon" in r.json()["error"]


def test_past_the_queue_bound_the_answer_is_503_with_retry_after(server):
    content = open(server["videos"]["clip"], "rb").read()
    data = {"window_s": "0.5", "attention": "1"}  # a long job: the others arrive meanwhile
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: _post(server, f"c{i}.avi", content=content, data=data),
                                range(8)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
            assert "busy" in r.json()["error"]
        else:
            assert len(r.json()["windows"]) == 6
    # Every 200 is the same answer: one model call at a time, nothing mixed up.
    tops = {json.dumps(r.json()["top"]) for r in answers if r.status_code == 200}
    assert len(tops) == 1
    assert requests.get(f"{server['url']}/healthz", timeout=10).json()["queue"]["refused"] >= 1
    assert not _uploads_left(server)


def test_the_page_and_its_assets_come_from_the_server_only(server):
    page = requests.get(server["url"] + "/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css"):
        r = requests.get(server["url"] + asset, timeout=10)
        assert r.status_code == 200 and len(r.text) > 500
    for text in (page.text, requests.get(server["url"] + "/static/style.css").text,
                 requests.get(server["url"] + "/static/app.js").text):
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text and "//cdn" not in text and "@import" not in text


# -- start-up --------------------------------------------------------------------

BLOCK_EXTRA = import_block.hook_source("fastapi", "uvicorn", "multipart") + r"""
import runpy
runpy.run_module("experiments.serve", run_name="__main__", alter_sys=True)
"""


def test_help_works_and_start_says_how_to_install_without_the_extra(tmp_path):
    r = subprocess.run([sys.executable, "-c", BLOCK_EXTRA, "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert "--max_upload_mb" in r.stdout and "--spatial_model" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-c", BLOCK_EXTRA, "--spatial_model=m.keras"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "mat-effnet-serve: error: the server needs fastapi, uvicorn, python-multipart "
        "(the [serve] extra): pip install -e .[serve]"]


def test_a_bad_flag_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "experiments.serve", "--spatial_model=m.keras",
                        "--warmup_sizes=big"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == (
        "mat-effnet-serve: error: --warmup_sizes=big: expected WxH, e.g. 320x240")


def test_stack_frames_name_the_stage():
    from mat_effnet.webapp import jobs

    def in_module(module, function, inner=None):
        scope = {"__name__": module, "inner": inner or (lambda: sys._getframe())}
        exec(f"def {function}():\n    return inner()\n", scope)
        return scope[function]

    flow = in_module("mat_effnet.ops.optical_flow", "fn")
    assert jobs.stage_of(in_module("mat_effnet.encoding.encode", "run_flow", flow)()) == "flow"
    decode = in_module("mat_effnet.ops.video", "_generate")
    assert jobs.stage_of(in_module("mat_effnet.encoding.encode", "encode_frames",
                                   decode)()) == "decoding"
    model = in_module("keras.src.models", "__call__")
    assert jobs.stage_of(in_module("mat_effnet.serving.predict_video", "stream_scores",
                                   model)()) == "streams"
    assert jobs.stage_of(sys._getframe()) is None


# -- in a browser ----------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMEDRIVER):
        pytest.skip(f"{CHROMEDRIVER} is missing: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1100,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def _upload_in_page(server, browser, path):
    from selenium.webdriver.common.by import By

    browser.get(server["url"] + "/")
    browser.find_element(By.ID, "file").send_keys(str(path))


def _wait_for(browser, element_id, timeout=120):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(browser, timeout).until(
        EC.visibility_of_element_located((By.ID, element_id)))


def test_the_page_shows_the_prediction(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _upload_in_page(server, browser, server["videos"]["clip"])
    _wait_for(browser, "result")
    want = server["expected"]["whole"]["top"][0]["class"]
    assert browser.find_element(By.ID, "summary").get_attribute("data-top1") == want
    bars = browser.find_elements(By.CSS_SELECTOR, "#top5 g.bar")
    assert [b.get_attribute("data-class") for b in bars][0] == want and len(bars) == 5
    assert len(browser.find_elements(By.CSS_SELECTOR, "#streams .stream")) == 2
    assert browser.find_element(By.ID, "timeline-card").is_displayed()  # 3 s > one window
    assert browser.find_elements(By.CSS_SELECTOR, "#timeline-svg polyline")
    image = _wait_for(browser, "attention")
    assert browser.execute_script("return arguments[0].naturalWidth", image) > 100
    stages = [r.get_attribute("data-stage") for r in
              browser.find_elements(By.CSS_SELECTOR, "#times tr")]
    assert {"spatial_model_s", "temporal_model_s", "attention_s", "timeline_s",
            "total_s"} <= set(stages)
    # Decoding and flow: split by the samples, else the measured preparation whole.
    assert {"decoding_s", "flow_s"} <= set(stages) or "prepare_s" in stages
    shot = tmp_path / "serve.png"
    browser.set_window_size(1100, browser.execute_script(
        "return document.documentElement.scrollHeight") + 200)
    assert browser.save_screenshot(str(shot)) and shot.read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("MAT_EFFNET_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["MAT_EFFNET_SCREENSHOT"])


def test_the_page_says_what_is_wrong_with_a_text_file(server, browser):
    from selenium.webdriver.common.by import By

    _upload_in_page(server, browser, server["root"] / "notes.txt")
    error = _wait_for(browser, "error", timeout=60)
    assert "notes.txt: not a usable video" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()
