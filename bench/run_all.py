"""Run every benchmark under bench/ with its default arguments (``make bench``).

Each script prints its own table (including its same-run baseline and ratio); the
results and the commands are recorded in docs/performance.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    failed = 0
    for script in sorted(HERE.glob("bench_*.py")):
        print(f"== {script.name}", flush=True)
        code = subprocess.call([sys.executable, str(script), *sys.argv[1:]])
        failed += code != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
