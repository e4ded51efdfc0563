import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def workdir():
    """A short temporary directory (ipc paths are limited to ~107 bytes) and the stages
    started in it; every stage is stopped (and its exit checked) and the directory removed."""
    from tests.supervisor_harness import Stage, short_tmp, stop_all

    directory = short_tmp()
    stages: list[Stage] = []
    yield directory, stages
    try:
        stop_all(stages)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
