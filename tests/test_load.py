"""Eight sessions predicting with Grad-CAM at once, through a real ``streamlit run`` server
on 127.0.0.1, spoken to as a browser does: websocket protobuf messages and HTTP uploads.

Checked: every session gets the probability and the CAM of its own image (a CAM mixed
up with another session's would not match), the model is loaded once for all sessions,
hostile uploads in the stream are refused without taking the server down, and the
server's memory does not grow with the number of requests.
"""

from __future__ import annotations

import io
import shutil
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from appserver import streamlit_app
from conftest import film_with_a_map
from PIL import Image
from requests.adapters import HTTPAdapter
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.Common_pb2 import FileUploaderState
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState
from urllib3.util import Retry
from websockets.sync.client import connect

from cxr_core.data.synthetic import radiograph
from cxr_core.predict.inference import explain, load_model, overlay, predict
from pages.common.uploads import display_name

pytestmark = pytest.mark.numeric  # run again on the AVX2/fp32 path by .ci/run

SESSIONS = 8
PER_SESSION = 25  # 200 requests in all
WARMUP = 5  # requests per session before the first memory reading
HOSTILE_EVERY = 6  # every 6th upload is a decompression bomb or a truncated file
RECV_TIMEOUT = 300


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def server(tiny_run_dir, tmp_path):
    """``streamlit run app.py`` on a free local port over a runs folder with one model."""
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run_dir, runs / "tiny")
    env = {
        "CXR_RUNS_DIR": str(runs),
        "CXR_BUNDLED_DIR": str(tmp_path / "no-bundled"),
        # Eight sessions share two cores: one intra-op thread per request, or OpenMP's
        # spinning threads make each tiny forward pass 50x slower on a busy machine.
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / "server.log"
    with streamlit_app(env, log, "--server.fileWatcherType", "none") as (base, process):
        yield base, process, runs / "tiny"


class Browser:
    """One browser tab on the Predict page: its own session, uploads and reruns."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = requests.Session()
        # The server (uvicorn) closes a connection idle for 5 s, and a request sent on it as
        # it closes is reset: a browser then sends it again on a new connection, as this does.
        self.http.mount("http://", HTTPAdapter(max_retries=Retry(total=2, status=0)))
        self.http.get(f"{base}/_stcore/health", timeout=60)
        self.xsrf = self.http.cookies["_streamlit_xsrf"]
        self.exit = ExitStack()
        self.ws = self.exit.enter_context(
            connect(
                base.replace("http", "ws") + "/_stcore/stream",
                subprotocols=["streamlit", self.xsrf],
                additional_headers={"Cookie": f"_streamlit_xsrf={self.xsrf}"},
                max_size=None,
                open_timeout=60,
            )
        )
        self.session_id = self.page_hash = ""
        self.widgets: dict[str, str] = {}
        self.previous_upload: str | None = None
        self.rerun()

    def close(self) -> None:
        self.exit.close()

    def _send(self, message: BackMsg) -> None:
        self.ws.send(message.SerializeToString())

    def _receive(self) -> ForwardMsg:
        message = ForwardMsg()
        message.ParseFromString(self.ws.recv(timeout=RECV_TIMEOUT))
        kind = message.WhichOneof("type")
        if kind == "new_session":
            self.session_id = message.new_session.initialize.session_id
        elif kind == "navigation":
            pages = {p.url_pathname: p.page_script_hash for p in message.navigation.app_pages}
            self.page_hash = pages["predict"]
        return message

    def rerun(self, states=()) -> list:
        """Run the Predict page with these widget states; its new elements."""
        back = BackMsg()
        back.rerun_script.page_name = "predict"
        back.rerun_script.page_script_hash = self.page_hash
        for state in states:
            back.rerun_script.widget_states.widgets.append(state)
        self._send(back)
        elements = []
        while True:
            message = self._receive()
            kind = message.WhichOneof("type")
            if kind == "script_finished":
                if message.script_finished == ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    elements = []  # the page called st.rerun: its next run follows
                    continue
                break
            if kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                element = message.delta.new_element
                widget = getattr(element, element.WhichOneof("type"))
                if getattr(widget, "id", None):
                    self.widgets[element.WhichOneof("type") + ":" + widget.id] = widget.id
                elements.append(element)
        return elements

    def widget(self, kind: str, key: str | None = None) -> str:
        (found,) = [i for k, i in self.widgets.items() if k.startswith(kind) and (key or "") in i]
        return found

    def upload(self, name: str, data: bytes):
        back = BackMsg()
        back.file_urls_request.request_id = name
        back.file_urls_request.file_names.append(name)
        back.file_urls_request.session_id = self.session_id
        self._send(back)
        while (message := self._receive()).WhichOneof("type") != "file_urls_response":
            pass
        urls = message.file_urls_response.file_urls[0]
        response = self.http.put(
            self.base + urls.upload_url,
            files={"file": (name, data, "image/png")},
            headers={"X-Xsrftoken": self.xsrf},
            timeout=RECV_TIMEOUT,
        )
        assert response.status_code == 204, response.text
        return urls

    def predict(self, name: str, data: bytes) -> dict:
        """Upload one image (replacing the last, as a user would) and read the result."""
        urls = self.upload(name, data)
        if self.previous_upload:  # the tab removes the file it replaced
            self.http.delete(self.base + self.previous_upload, headers={"X-Xsrftoken": self.xsrf})
        self.previous_upload = urls.delete_url
        uploader = FileUploaderState()
        info = uploader.uploaded_file_info.add()
        info.file_id, info.name, info.size = urls.file_id, name, len(data)
        info.file_urls.CopyFrom(urls)
        files = WidgetState(id=self.widget("file_uploader"))
        files.file_uploader_state_value.CopyFrom(uploader)
        opacity = WidgetState(id=self.widget("slider", "predict_opacity"))
        opacity.double_array_value.data.append(1.0)  # the overlay shows the CAM alone
        states = [files, opacity]
        result = {"errors": [], "metrics": [], "overlays": [], "subheaders": [], "exceptions": []}
        for element in self.rerun(states):
            kind = element.WhichOneof("type")
            if kind == "metric":
                result["metrics"].append(element.metric.body)
            elif kind == "alert" and element.alert.format == 1:  # ERROR
                result["errors"].append(element.alert.body)
            elif kind == "heading" and element.heading.tag == "h3":  # st.subheader
                result["subheaders"].append(element.heading.body)
            elif kind == "exception":
                result["exceptions"].append(element.exception.message)
            elif kind == "imgs":
                for image in element.imgs.imgs:
                    if image.caption.startswith("gradcam"):
                        png = self.http.get(self.base + image.url, timeout=RECV_TIMEOUT).content
                        result["overlays"].append(np.asarray(Image.open(io.BytesIO(png))))
        return result


def image_bytes(seed: int) -> bytes:
    """A 768 px radiograph with fine noise (about 0.5 MB as PNG): a leak of uploads or of
    decoded full-size images would show in the server's memory within 200 requests."""
    rng = np.random.default_rng(seed)
    small, _ = radiograph(rng, 256, pneumonia=bool(seed % 2))
    # Shifted and sometimes flipped: each image's CAM differs clearly from the others'.
    small = np.roll(small, tuple(rng.integers(-64, 65, 2)), axis=(0, 1))
    small = small[:, ::-1] if seed % 3 == 0 else small
    big = np.asarray(Image.fromarray(small).resize((768, 768), Image.BILINEAR), np.int16)
    noisy = np.clip(big + rng.integers(-6, 7, big.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="PNG")
    return buffer.getvalue()


def hostile_bytes(index: int) -> tuple[bytes, str]:
    from test_hostile_images import png_header

    if index % 2:
        return png_header(60_000, 60_000), "megapixel limit (refused before decoding)"
    return image_bytes(index)[:20_000], "truncated or corrupt"


def mean_abs_distances(images: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Mean absolute pixel difference of each image (rows) to each reference (columns)."""
    return np.stack([np.abs(references - image).mean(axis=(1, 2, 3)) for image in images])


def assert_own_cams(plan: dict, results: dict) -> None:
    """Each received overlay is its own image's CAM: nearest to its own expected overlay among
    all expected ones, up to JPEG noise, and the CAMs are told apart from one another.

    Judged by ranks, not by a margin: how far apart two images' CAMs are depends on the
    trained weights, which differ between CPUs (bf16 training where the CPU has it)."""
    keys = [key for key, (_, _, expected) in plan.items() if "overlay" in expected]
    expected = np.stack([plan[key][2]["overlay"] for key in keys]).astype(np.float32)
    received = np.stack([results[key]["overlays"][0] for key in keys]).astype(np.float32)
    to_expected = mean_abs_distances(received, expected)
    between = mean_abs_distances(expected, expected)
    rows = np.arange(len(keys))
    own = to_expected[rows, rows]
    nearest = to_expected.argmin(axis=1)
    # The tiny model draws some images' CAM as the same blob in a corner: such an overlay
    # may be nearest to a copy of its own, another expected overlay that differs from its
    # own by less than JPEG noise (less than the received overlay differs from that copy).
    # Another CAM that differs by more than the noise is never the nearest one.
    copy = between[rows, nearest] < to_expected[rows, nearest]
    wrong = [(keys[k], keys[j]) for k, j in enumerate(nearest) if j != k and not copy[k]]
    others = np.where(np.eye(len(keys), dtype=bool), np.inf, to_expected).min(axis=1)
    print(
        f"CAM error: own {own.max():.1f} at most; nearest to its own for "
        f"{np.sum(nearest == rows)} of {len(keys)}, to a copy of its own for "
        f"{np.sum(copy & (nearest != rows))}; the next nearest {np.median(others / own):.1f}x "
        "as far (median)"
    )
    assert not wrong, f"(session, image) got the CAM of (session, image): {wrong}"
    assert own.max() < 5, own.max()  # JPEG noise only (quality 90 on smooth maps: 1-3)
    # The check can fail: most CAMs differ from all others by more than JPEG noise (if all
    # were copies, any mix-up would pass unseen and the nearest would rarely be its own).
    assert np.mean(nearest == rows) > 0.5


def test_eight_sessions_predicting_with_gradcam_through_the_server(server):
    base, process, run_dir = server
    prepared = time.monotonic()
    plan = {}  # (session, i) -> (name, data, expected)
    model = load_model(run_dir)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the server; restored below
    for s in range(SESSIONS):
        for i in range(PER_SESSION):
            name = f"../../tmp/s{s}-{i}.png" if i % 5 == 0 else f"session{s}-image{i}.png"
            if i % HOSTILE_EVERY == HOSTILE_EVERY - 1:
                data, refusal = hostile_bytes(s * 100 + i)
                plan[s, i] = (name, data, {"refusal": refusal})
                continue
            data = film_with_a_map(model, image_bytes, s * 100 + i)
            (prediction,) = predict(model, [data])
            heat = explain(model, prediction.pixels.copy(), "gradcam")
            expected = {
                "metric": f"{prediction.probability:.1%}",
                "overlay": overlay(prediction.pixels, heat, 1.0).astype(np.int16),
            }
            plan[s, i] = (name, data, expected)
    torch.set_num_threads(threads_before)

    results: dict[tuple[int, int], dict] = {}
    failures: list[str] = []
    memory: dict[str, float] = {}

    # Memory is read with all eight sessions open and idle, after the warm-up and before
    # the last request: what 150-odd requests in between left behind.
    def read_memory() -> None:
        memory["late" if memory else "warm"] = rss_mb(process.pid)

    barrier = threading.Barrier(SESSIONS, action=read_memory)

    def session(s: int) -> None:
        browser = None
        try:
            browser = Browser(base)
            for i in range(PER_SESSION):
                if i in (WARMUP, PER_SESSION - 1):
                    barrier.wait(timeout=RECV_TIMEOUT * 2)
                name, data, _ = plan[s, i]
                results[s, i] = browser.predict(name, data)
        except Exception as exc:  # reported below with the session it happened in
            failures.append(f"session {s}: {type(exc).__name__}: {exc}")
            barrier.abort()
        finally:
            if browser:
                browser.close()

    started = time.monotonic()
    threads = [threading.Thread(target=session, args=(s,)) for s in range(SESSIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    memory["closed"] = rss_mb(process.pid)
    # A leak outlives the sessions; websocket and session buffers (tens of MB with eight
    # sessions open) are freed when they close, so growth is read after they have closed.
    growth = memory["closed"] - memory.get("warm", 0)
    print(
        f"\nexpected results in {started - prepared:.0f} s; {len(plan)} requests in "
        f"{elapsed:.0f} s; server RSS (MB) {memory}; growth {growth:.0f} MB"
    )
    assert not failures, failures
    assert process.poll() is None and requests.get(f"{base}/_stcore/health").ok

    for (s, i), (name, _, expected) in plan.items():
        result = results[s, i]
        assert not result["exceptions"], result["exceptions"]
        assert result["subheaders"] == [display_name(name)]
        if "refusal" in expected:
            assert len(result["errors"]) == 1 and expected["refusal"] in result["errors"][0]
            assert "\n" not in result["errors"][0] and not result["metrics"]
            continue
        assert result["errors"] == [], result["errors"]
        assert result["metrics"] == [expected["metric"]], (s, i)
        assert len(result["overlays"]) == 1, (s, i)
    assert_own_cams(plan, results)
    assert not [p for s in range(SESSIONS) for p in Path("/tmp").glob(f"s{s}-*.png")]

    # Waiting callers count as misses; computations are counted apart: one model load.
    metrics = requests.get(f"{base}/_stcore/metrics", timeout=60).text
    loads = [
        line for line in metrics.splitlines()
        if line.startswith("cache_compute_duration_seconds_count") and "loaded_model" in line
    ]  # fmt: skip
    assert len(loads) == 1 and loads[0].endswith(" 1"), loads
    assert growth < 40, memory  # a leak of one decoded upload per request: about 75 MB
