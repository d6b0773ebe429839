"""The headstart CLI with the tests' tiny backbone registered, for tests that run it in
subprocesses (signals, torchrun)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conftest  # noqa: E402,F401 - registers the tiny backbone
from headstart.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
