import numpy as np
import pytest
from PIL import Image

from covidct.data.cache import DecodedCache, decode


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, mode in enumerate(["L", "RGB", "RGBA"]):
        arr = rng.integers(0, 256, (300, 400), dtype=np.uint8)
        path = tmp_path / f"{i}.png"
        Image.fromarray(arr).convert(mode).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("side", [None, 128])
def test_cache_returns_exactly_a_fresh_decode(images, side):
    cache = DecodedCache(shorter_side=side)
    for p in images:
        first, again = cache.get(p), cache.get(p)
        fresh = decode(p, side)
        assert np.array_equal(first, fresh) and np.array_equal(again, fresh)
        assert min(first.shape[:2]) == (side or 300)
    assert cache.misses == 3 and cache.hits == 3


def test_changed_file_invalidates_its_entry(images):
    cache = DecodedCache()
    before = cache.get(images[0]).copy()
    Image.fromarray(np.zeros((300, 400), np.uint8)).save(images[0])
    after = cache.get(images[0])
    assert not np.array_equal(before, after) and after.max() == 0
    assert np.array_equal(after, decode(images[0], None))


def test_memory_bound_is_kept(images):
    one = decode(images[0], None).nbytes
    cache = DecodedCache(max_bytes=int(one * 2.5))
    for p in images * 2:
        cache.get(p)
        assert cache.bytes <= cache.max_bytes
    assert len(cache._entries) == 2


def test_disk_entries_are_reused_across_caches(images, tmp_path):
    store = tmp_path / "store"
    DecodedCache(directory=store).get(images[1])
    assert len(list(store.glob("*.npy"))) == 1
    second = DecodedCache(directory=store)
    got = second.get(images[1])
    assert isinstance(got, np.memmap) and np.array_equal(got, decode(images[1], None))
    (next(store.glob("*.npy"))).write_bytes(b"damaged")
    assert np.array_equal(DecodedCache(directory=store).get(images[1]), decode(images[1], None))


def test_training_fills_and_reuses_the_disk_store(tiny_dataset, tmp_path):
    from covidct.config import TrainConfig
    from covidct.training.fit import train

    store = tmp_path / "store"
    config = dict(
        model="timm:resnet10t",
        data_dir=str(tiny_dataset),
        pretrained=False,
        epochs=1,
        batch_size=8,
        num_workers=0,
        out=str(tmp_path / "runs"),
        cache_dir=str(store),
    )
    train(TrainConfig(**config), progress=False)
    entries = sorted(p.name for p in store.glob("*.npy"))
    assert len(entries) == 16 + 8  # train images (shrunk) and val images (full size), one file each
    train(TrainConfig(**config), progress=False)
    assert sorted(p.name for p in store.glob("*.npy")) == entries  # nothing decoded twice
