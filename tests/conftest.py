import numpy as np
import pytest

import synthetic

TINY = ((24, 24, 8), (40, 40, 12))      # native sizes of the test cases: coarser than the grid below
GRID = (48, 48, 16)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A synthetic BONBID-HIE of 3 training and 2 validation cases, small volumes."""
    return synthetic.synthesize(tmp_path_factory.mktemp("bonbid"), n_train=3, n_val=2, seed=5, size_range=TINY)


def multifocal(rng, shape, n):
    """A mask of ``n`` random ellipsoids, some cut by the array's border."""
    m = np.zeros(shape, bool)
    grid = np.indices(shape).transpose(1, 2, 3, 0)
    for _ in range(n):
        c = rng.uniform(-0.1, 1.1, 3) * np.array(shape)
        r = rng.uniform(1, 5, 3)
        m |= (((grid - c) / r) ** 2).sum(-1) <= 1
    return m


@pytest.fixture(autouse=True, scope="session")
def no_cache_in_the_checkout(tmp_path_factory):
    """A test that leaves --cache out gets a temporary cache, not the checkout's cache/."""
    import data
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data, "CACHE", tmp_path_factory.mktemp("default-cache"))
        yield


def special_masks():
    """2-D and 3-D masks a fast path could get wrong: empty, full, one voxel, touching the
    border, a thin shell, scattered voxels, random."""
    rng = np.random.default_rng(12)
    out = []
    for shape in ((9, 7), (7, 9, 5), (1, 6, 4)):
        one, border, shell = np.zeros(shape, bool), np.zeros(shape, bool), np.ones(shape, bool)
        one[tuple(n // 2 for n in shape)] = True
        border[0] = border[(-1,) * len(shape)] = True
        shell[tuple(slice(1, -1) for _ in shape)] = False
        out += [np.zeros(shape, bool), np.ones(shape, bool), one, border, shell, rng.random(shape) > 0.9,
                rng.random(shape) > 0.4]
    return out
