"""Running the toolkit's tools from the tests without paying their imports each time.

A tool run costs about 5 s of CPU before it does anything: importing torch, Detectron2, mmengine,
MMSegmentation and the toolkit. The doc-command twins and the bad-input rows run a tool some 150
times, so the suite spent minutes importing. Here one server process per test process (a
"zygote") imports all of that once, and each tool run is a fork of it: a process of its own, with
its own pid, arguments, working folder, environment, output file and exit status, that runs the
tool's file as `__main__` exactly as `python tools/x.py` would.

A run is forked only where nothing it would see can differ from a fresh interpreter: a
`python some/file.py ...` command whose environment equals the server's but for `IGNORED_KEYS`
(which no import reads; PYTHONPATH is moot under the toolkit's editable install); for example
Detectron2 reads DETECTRON2_DATASETS when it is imported, so a command that sets it runs as a
plain subprocess, as does every other command (torchrun, bash). `MAE_TEST_FORK=0` turns the server
off."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What every tool imports, imported once by the server.
PRELOAD = ("torch", "torchvision", "timm", "detectron2.engine", "detectron2.config", "detectron2.data",
           "detectron2.modeling", "detectron2.evaluation", "mmengine.runner", "mmseg.apis", "mae_core.engine",
           "detection.train", "segmentation.train", "mae_app.report", "mae_app.classify")
# Keys that may differ between a request and the server's environment (no import reads them; the
# tool gets the request's values).
IGNORED_KEYS = ("PYTHONUNBUFFERED", "PYTHONPATH", "MAE_TEST_FORK", "PYTEST_CURRENT_TEST")

SERVER = r"""
import json, os, runpy, sys
for name in sys.argv[1:]:
    __import__(name)
print("ready", flush=True)
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = request["argv"]
        sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
        del line, request, log, null, pid
        runpy.run_path(sys.argv[0], run_name="__main__")
        sys.exit(0)
    print(pid, flush=True)
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def base_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}


def comparable(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in IGNORED_KEYS}


class Server:
    """The preloaded interpreter; one request at a time (a test waits for its tool)."""

    def __init__(self):
        self.env = base_env()
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, *PRELOAD], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env=self.env, cwd=REPO)
        line = ""
        while line != "ready":  # what an import prints on stdout comes first
            line = read_line(self.proc.stdout.fileno(), 300)
            if line is None:
                raise RuntimeError("the tool server did not start within 300 s")
        atexit.register(self.proc.kill)

    def forkable(self, argv: list[str], env: dict[str, str]) -> bool:
        return (len(argv) > 1 and argv[0] == sys.executable and argv[1].endswith(".py")
                and comparable(env) == comparable(self.env) and self.proc.poll() is None)

    def start(self, argv: list[str], cwd: Path | str, env: dict[str, str], log: Path | str) -> ForkedTool:
        request = {"argv": argv[1:], "cwd": str(cwd), "env": env, "log": str(log)}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return ForkedTool(int(read_line(self.proc.stdout.fileno(), None)), self.proc.stdout.fileno())


def read_line(fd: int, timeout: float | None) -> str | None:
    """One line from the server, read a byte at a time (no buffer could hide a line from select);
    None when nothing comes within `timeout` seconds."""
    if not select.select([fd], [], [], timeout)[0]:
        return None
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(fd, 1)
        if not byte:
            raise RuntimeError(f"the tool server stopped (after {line!r})")
        line += byte
    return line.decode().strip()


class ForkedTool:
    """What the tests use of subprocess.Popen, for a tool the server forked."""

    def __init__(self, pid: int, replies: int):
        self.pid, self.replies, self.returncode = pid, replies, None

    def poll(self) -> int | None:
        try:
            return self.wait(0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            line = read_line(self.replies, timeout)
            if line is None:
                raise subprocess.TimeoutExpired(str(self.pid), timeout)
            self.returncode = int(line)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
        if self.returncode is None:
            self.wait()


_server: Server | None = None


def server() -> Server | None:
    global _server
    if os.environ.get("MAE_TEST_FORK", "1") == "0":
        return None
    if _server is None or _server.proc.poll() is not None:
        _server = Server()
    return _server


def start(argv: list[str], cwd: Path | str, env: dict[str, str], log) -> ForkedTool | subprocess.Popen:
    """`argv` started with its output (stdout and stderr) in the open file `log`: forked from the
    server where it can be, else a subprocess."""
    s = server()
    if s is not None and s.forkable(argv, env):
        return s.start(argv, cwd, env, log.name)
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def run(argv: list[str], cwd: Path | str, env: dict[str, str], timeout: float = 600
        ) -> subprocess.CompletedProcess:
    """subprocess.run(argv, capture_output=True, text=True) with stdout and stderr together in
    `.stdout` (and `.stderr` empty)."""
    with tempfile.NamedTemporaryFile("w+", suffix=".log") as log:
        proc = start(argv, cwd, env, log)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            if proc.returncode is None:  # timed out: killed and reaped, as subprocess.run does
                proc.kill()
                proc.wait()
        log.seek(0)
        return subprocess.CompletedProcess(argv, code, log.read(), "")


def tool(name: str, *args) -> list[str]:
    """The command line `python tools/<name> args...`."""
    return [sys.executable, str(REPO / "tools" / name), *map(str, args)]


def run_tool(name: str, *args, cwd: Path | str = REPO, timeout: float = 600) -> subprocess.CompletedProcess:
    """`run` of tools/<name> with the tests' environment (`base_env`)."""
    return run(tool(name, *args), cwd, base_env(), timeout)
