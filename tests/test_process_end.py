"""The `runink` script ends without the interpreter's teardown (runink.core.process_end),
yet everything an ordinary exit runs that matters has run: the threads that are not daemons
finished, a thread pool's queued work done, the atexit functions called, all output out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ENDING = """
import atexit, concurrent.futures, sys, threading, time
from pathlib import Path
from runink.core.process_end import end_now

out = Path(sys.argv[1])

class Teardown:
    def __del__(self):
        sys.stderr.write("torn down\\n")

kept = Teardown()  # freed only by the interpreter's teardown

def late(name, delay):
    time.sleep(delay)
    (out / name).write_text("done")

threading.Thread(target=late, args=("thread", 0.3)).start()  # not a daemon: waited for
pool = concurrent.futures.ThreadPoolExecutor(1)
pool.submit(late, "pool", 0.3)  # a pool never shut down: its queued work still runs
atexit.register(lambda: (out / "atexit").write_text("called"))
sys.stdout.write("".join("%06d\\n" % i for i in range(50_000)))  # 350 KB, buffered
end_now(int(sys.argv[2]))
"""


def _end(tmp_path: Path, status: int) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", ENDING, str(tmp_path), str(status)], capture_output=True, timeout=60, check=False
    )


def test_the_process_ends_with_its_status_after_what_an_exit_must_run(tmp_path: Path) -> None:
    ended = _end(tmp_path, 3)
    assert ended.returncode == 3, ended.stderr
    assert ended.stdout == b"".join(b"%06d\n" % i for i in range(50_000))
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"thread": "done", "pool": "done", "atexit": "called"}
    assert b"torn down" not in ended.stderr  # the teardown was skipped


def test_the_runink_script_ends_that_way_and_a_caller_of_main_gets_system_exit(tmp_path: Path) -> None:
    """`python -m runink` (the script: main() with no argv) ends through end_now; main(argv)
    raises SystemExit, so a program that calls it goes on."""
    probe = (
        "import sys; from runink.core.cli import main\n"
        "try:\n    main(['--bogus-option'])\nexcept SystemExit as exc:\n    print('caught', exc.code)\n"
        "import runink.core.process_end as p\n"
        "p.end_now = lambda status: (print('end_now', status), sys.exit(status))\n"
        "sys.argv = ['runink', '--bogus-option']\nmain()\n"
    )
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)
    assert ran.stdout.split("\n")[:2] == ["caught 2", "end_now 2"], (ran.stdout, ran.stderr)
    assert ran.returncode == 2
