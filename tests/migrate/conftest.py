"""Fixtures for the migration tests: throwaway TLS certificates, scratch
directories with short paths (unix socket paths are limited to ~107 bytes)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# helper modules beside this file, whatever pytest's import mode is
sys.path.insert(0, str(Path(__file__).parent))

from mig_certs import Certs, make_certs


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A scratch directory under /tmp with a short path (for unix sockets)."""
    d = Path(tempfile.mkdtemp(prefix="mt-"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
