from __future__ import annotations

import pytest
from virtio_helpers import make_build, make_image, make_registry


@pytest.fixture
def image(tmp_path):
    return make_image(str(tmp_path / "disk.img"))


@pytest.fixture(scope="session")
def registry():
    return make_registry()


@pytest.fixture(params=["combined", "split"])
def build(request, image):
    """A build of either kind with the test image; closed afterwards."""
    root, machine, dev = make_build(request.param, image)
    yield root, machine, dev
    dev.vdev.close()


@pytest.fixture
def split_build(image):
    root, machine, dev = make_build("split", image)
    yield root, machine, dev
    dev.vdev.close()
