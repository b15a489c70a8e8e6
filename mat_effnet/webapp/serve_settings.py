"""The server's settings, and the check that its web framework is installed."""

from __future__ import annotations

import dataclasses
import importlib.util

from mat_effnet.common.errors import MatEffNetError, bad_argument
from mat_effnet.common.flagdefs import setting

#: The distributions of the ``[serve]`` extra, by the module each installs.
EXTRA_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "multipart": "python-multipart"}
INSTALL = "pip install -e .[serve]"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclasses.dataclass
class ServeSettings:
    """Where the server listens, what it accepts, and how it warms up."""

    host: str = setting("127.0.0.1", "Address to listen on. The default answers this machine "
                        "only; 0.0.0.0 opens it to the network (there is no authentication).")
    port: int = setting(8000, "Port to listen on (0: any free one, printed).")
    max_queue: int = setting(4, "Predictions that may wait while one runs; past that, "
                             "503 with Retry-After.")
    max_upload_mb: float = setting(512.0, "Largest upload accepted, in MiB (413 past it).")
    window_s: float = setting(2.0, "The page's default timeline window in seconds: a video "
                              "longer than this also gets a timeline chart (0: never).")
    warmup_sizes: tuple = setting(("320x240",), "Frame sizes WxH to warm up on before "
                                  "reporting ready (TV-L1 compiles once per working size).")
    keep_jobs: int = setting(64, "Finished predictions the page can still fetch.")

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise bad_argument("port", self.port, "expected 0..65535")
        if self.max_queue < 0:
            raise bad_argument("max_queue", self.max_queue, "must be >= 0")
        if not self.max_upload_mb > 0:
            raise bad_argument("max_upload_mb", self.max_upload_mb, "must be > 0")
        if self.window_s < 0:
            raise bad_argument("window_s", self.window_s, "must be >= 0")
        if self.keep_jobs < 1:
            raise bad_argument("keep_jobs", self.keep_jobs, "must be >= 1")
        self.warmup_sizes = tuple(str(s) for s in self.warmup_sizes)
        self.frame_sizes()  # refuse a bad size now, by name

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK

    def frame_sizes(self) -> list[tuple[int, int]]:
        """``warmup_sizes`` as (width, height) pairs."""
        sizes = []
        for text in self.warmup_sizes:
            try:
                w, h = (int(v) for v in text.lower().split("x"))
            except ValueError:
                raise bad_argument("warmup_sizes", text, "expected WxH, e.g. 320x240") from None
            if w < 2 or h < 2:
                raise bad_argument("warmup_sizes", text, "sides must be >= 2")
            sizes.append((w, h))
        return sizes


def require_extra() -> None:
    """Raises one line saying how to install the web framework, when it is missing."""
    missing = [dist for module, dist in EXTRA_MODULES.items() if not _installed(module)]
    if missing:
        raise MatEffNetError(f"the server needs {', '.join(missing)} (the [serve] extra): "
                             f"{INSTALL}")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses it (or a broken parent package)
        return False
