"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from tests.helpers import minilm_path
from tests.tiny_run import make_tiny_run_files


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(model folder, small scored BGE file) from tests/tiny_run.py, made once per test session."""
    return make_tiny_run_files(str(tmp_path_factory.mktemp("tiny")), minilm_path())
