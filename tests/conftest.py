"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from tests.helpers import make_tiny_run_files, minilm_path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(model folder, small scored BGE file) from tests/helpers.py, made once per test session."""
    return make_tiny_run_files(str(tmp_path_factory.mktemp("tiny")), minilm_path())
