"""Benchmark: the real-trace decision benchmark against this checkout's ``wanctl-replay``.

Runs ``../shared/realtraces/bench.py`` (beside the repository; skipped with a
message when it is absent) with ``.venv/bin/wanctl-replay`` and prints its
tables and SUMMARY line: per policy, worthy loads missed, false steers,
onset -> ENABLE and load end -> DISABLE.  Extra arguments go to bench.py,
e.g. ``--brief``, ``--only flent_wifi`` or ``--config CFG.yaml``.

    .venv/bin/python bench/bench_realtraces.py [--brief]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "realtraces" / "bench.py"


def main() -> int:
    if not BENCH.is_file():
        print(f"bench_realtraces: skipped: {BENCH} is not there (the real-trace set lives beside the repository)")
        return 0
    replay = Path(sys.executable).parent / "wanctl-replay"
    return subprocess.run([sys.executable, str(BENCH), str(replay), *sys.argv[1:]]).returncode


if __name__ == "__main__":
    sys.exit(main())
