"""Tests of the taskmaster Python package, run against the real master.

Run from the repository root:
``python3 -m unittest discover -s sdk/python/tests -t sdk/python -v``.
This file puts this directory and ``sdk/python`` on ``sys.path`` so the
test modules can ``import support`` and ``import taskmaster`` uninstalled.
"""

import sys
from pathlib import Path

for _dir in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))
