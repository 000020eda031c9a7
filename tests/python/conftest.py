"""Fixtures that run a real `ferrollm serve` on a free loopback port.

FERROLLM_BIN: the binary (default target/release/ferrollm).
FERROLLM_TEST_MODEL: the GGUF to serve (default ~/.cache/ferrollm/models/SmolLM2-135M-Instruct.Q4_1.gguf).
A missing model or binary fails the suite with the command that provides it; nothing is skipped.
"""

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import openai
import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
SERVED_NAME = "ferro-test"
# Small enough that a too-long prompt is cheap to build, large enough for every other test.
MAX_MODEL_LEN = 1024
STARTUP_TIMEOUT_S = 180


def model_path() -> Path:
    default = Path.home() / ".cache" / "ferrollm" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    path = Path(os.environ.get("FERROLLM_TEST_MODEL", default)).expanduser()
    if not path.is_file():
        pytest.fail(f"test model {path} is missing: run scripts/fetch-models.sh to fetch it", pytrace=False)
    return path


def binary_path() -> Path:
    path = Path(os.environ.get("FERROLLM_BIN", REPO / "target" / "release" / "ferrollm"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `cargo build --release -p ferrollm-cli`", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running `ferrollm serve` process and where to reach it."""

    def __init__(self, proc: subprocess.Popen, port: int, log_path: str):
        self.proc = proc
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def metrics(self) -> dict:
        """Prometheus samples keyed both by `name{labels}` and by bare name (last sample wins)."""
        text = requests.get(f"{self.base}/metrics", timeout=10).text
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            name_labels, _, value = line.rpartition(" ")
            out[name_labels] = float(value)
            out[name_labels.split("{")[0]] = float(value)
        return out


@contextlib.contextmanager
def run_server(*extra_args: str):
    port = free_port()
    args = [
        str(binary_path()), "serve", str(model_path()),
        "--host", "127.0.0.1", "--port", str(port),
        "--served-model-name", SERVED_NAME,
        "--max-model-len", str(MAX_MODEL_LEN),
        "--kv-cache-memory", "512MiB",
        *extra_args,
    ]
    log = tempfile.NamedTemporaryFile("w+", prefix="ferrollm-serve-", suffix=".log", delete=False)
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    server = Server(proc, port, log.name)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"ferrollm serve exited with {proc.returncode} at startup:\n{server.log()}", pytrace=False)
            try:
                if requests.get(f"{server.base}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"ferrollm serve not healthy after {STARTUP_TIMEOUT_S}s:\n{server.log()}", pytrace=False)
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        with contextlib.suppress(OSError):
            os.unlink(log.name)


@pytest.fixture(scope="session")
def server():
    with run_server() as s:
        yield s


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def model():
    return SERVED_NAME
