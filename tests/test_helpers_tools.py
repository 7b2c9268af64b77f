"""tests/helpers_tools.py: a tool forked from the preloaded server sees what a fresh `python
file.py` sees (arguments, working folder, environment, `__name__`, its own pid) and ends with the
same output and exit status; a signal reaches it; a command it cannot fork runs as a subprocess."""

from __future__ import annotations

import os
import signal
import sys
import textwrap

import helpers_tools

SCRIPT = textwrap.dedent("""
    import os, sys, time
    print(__name__, sys.argv[1:], os.getcwd(), os.environ.get("MAE_PROBE"),
          sys.path[0] == os.path.dirname(__file__))
    print("to stderr", file=sys.stderr)
    if sys.argv[1] == "sleep":
        time.sleep(60)
    sys.exit(int(sys.argv[2]))
""")


def test_a_forked_tool_sees_and_reports_what_a_subprocess_does(tmp_path, monkeypatch):
    script = tmp_path / "tool.py"
    script.write_text(SCRIPT)
    argv = [sys.executable, str(script), "exit", "3"]
    env = helpers_tools.base_env()
    server = helpers_tools.server()
    assert server.forkable(argv, env) and not server.forkable(argv, {**env, "MAE_PROBE": "x"})
    forked = helpers_tools.run(argv, tmp_path, env)
    monkeypatch.setenv("MAE_TEST_FORK", "0")
    plain = helpers_tools.run(argv, tmp_path, env)
    assert forked.returncode == plain.returncode == 3
    assert forked.stdout == plain.stdout == f"__main__ ['exit', '3'] {tmp_path} None True\nto stderr\n"


def test_a_forked_tool_has_its_own_pid_and_takes_signals(tmp_path):
    script = tmp_path / "tool.py"
    script.write_text(SCRIPT)
    with open(tmp_path / "log", "w+") as log:
        proc = helpers_tools.start([sys.executable, str(script), "sleep", "0"], tmp_path,
                                   helpers_tools.base_env(), log)
        assert isinstance(proc, helpers_tools.ForkedTool)
        assert proc.pid not in (os.getpid(), helpers_tools.server().proc.pid)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
