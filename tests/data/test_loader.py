"""SliceLoader (C++) against the NumPy oracle, thread/prefetch invariance, resume, fg_fraction, bad input."""
import numpy as np
import pytest
import torch

from fewshot_da.data.loader import SliceLoader
from fewshot_da.data.loader_reference import ItemRng, reference_batch, splitmix64_mix
from fewshot_da.errors import InputError

CROP = (16, 24)


def make_volumes(dtype, seed=0):
    """Slices larger than CROP, smaller in one dim, smaller in both, odd sizes, one single-slice volume."""
    rng = np.random.default_rng(seed)
    shapes = [(9, 40, 50), (6, 20, 33), (5, 13, 24), (7, 11, 9), (1, 17, 30)]
    images = [(rng.standard_normal(s) * 3 + k).astype(dtype) for k, s in enumerate(shapes)]
    masks = [(rng.random(s) > 0.6).astype(np.uint8) for s in shapes]
    return images, masks


def as_numpy(batch):
    x, y = batch
    return x.numpy().copy(), y.numpy().copy()


def assert_batch_equal(got, want):
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("crop", [CROP, (8, 8), (7, 13), (40, 64)])
def test_matches_numpy_reference(dtype, num_threads, crop):
    images, masks = make_volumes(dtype)
    loader = SliceLoader(images, masks, batch_size=12, crop=crop, seed=7, num_threads=num_threads)
    for step in (0, 1, 5, 2**40 + 3):
        got = as_numpy(loader.batch(step))
        want = reference_batch(images, masks, step=step, batch_size=12, crop=crop, seed=7)
        assert_batch_equal(got, want)
        assert got[0].dtype == np.float32 and got[0].shape == (12, 1) + crop


def test_float16_conversion_is_exact_for_every_half_value():
    # every non-NaN half (NaN payloads are not specified) in one (5771, 11) slice cropped whole: rows of
    # 11 values start at varying alignments, so the vector body and the scalar head/tail paths all run
    halves = np.arange(2**16, dtype=np.uint16).view(np.float16)
    halves = halves[~np.isnan(halves)]
    image = np.ascontiguousarray(halves[: 5771 * 11].reshape(1, 5771, 11))
    loader = SliceLoader([image], [np.ones(image.shape, np.uint8)], batch_size=1, crop=(5771, 11),
                         prefetch=False)
    x, y = loader.batch(0)
    np.testing.assert_array_equal(x[0, 0].numpy(), image[0].astype(np.float32))
    assert y.numpy().min() == 1.0


def test_comb_slices_match_reference():
    images, masks = make_volumes(np.float32)
    combs = [np.arange(0, (im.shape[0] // 3) * 3, 3) if im.shape[0] >= 3 else None for im in images]
    loader = SliceLoader(images, masks, combs, batch_size=16, crop=CROP, seed=1)
    for step in range(4):
        assert_batch_equal(as_numpy(loader.batch(step)),
                           reference_batch(images, masks, combs, step=step, batch_size=16, crop=CROP, seed=1))
        for volume, sl, *_ in loader.draws(step):
            assert combs[volume] is None or sl in combs[volume]


def test_centred_crop_arithmetic_by_hand():
    # 3 x 5 slice, crop 4 x 4: start = (3 // 2 - 4 // 2, 5 // 2 - 4 // 2) = (-1, 0), so the first output row
    # is padding (slice minimum 10 / mask 0), rows 1-3 are slice rows 0-2, columns 0-3 (column 4 is cut).
    image = (np.arange(15, dtype=np.float32).reshape(1, 3, 5) + 10)
    mask = np.zeros((1, 3, 5), np.uint8)
    mask[0, 2, 3] = 1
    x, y = SliceLoader([image], [mask], batch_size=2, crop=(4, 4), prefetch=False).batch(0)
    want = np.array([[10, 10, 10, 10], [10, 11, 12, 13], [15, 16, 17, 18], [20, 21, 22, 23]], np.float32)
    np.testing.assert_array_equal(x[1, 0].numpy(), want)
    want_mask = np.zeros((4, 4), np.float32)
    want_mask[3, 3] = 1
    np.testing.assert_array_equal(y[0, 0].numpy(), want_mask)


def test_random_crop_covers_every_fitting_position():
    image = np.zeros((1, 10, 12), np.float32)
    loader = SliceLoader([image], [np.zeros_like(image, np.uint8)], batch_size=64, crop=(9, 10),
                         prefetch=False)
    positions = {(d[2], d[3]) for step in range(3) for d in loader.draws(step)}
    assert positions == {(y0, x0) for y0 in (0, 1) for x0 in (0, 1, 2)}


def test_threads_and_prefetch_give_identical_batches():
    images, masks = make_volumes(np.float16)
    plain = SliceLoader(images, masks, batch_size=8, crop=CROP, seed=3, num_threads=1, prefetch=False)
    fast = SliceLoader(images, masks, batch_size=8, crop=CROP, seed=3, num_threads=2, prefetch=True)
    for step in [0, 1, 2, 9, 3, 3, 4]:  # sequential, a jump (prefetch discarded), a repeat
        assert_batch_equal(as_numpy(fast.batch(step)), as_numpy(plain.batch(step)))
    fast.close()


def test_seed_and_step_determine_the_batch():
    images, masks = make_volumes(np.float32)
    a = SliceLoader(images, masks, batch_size=8, crop=CROP, seed=11)
    b = SliceLoader(images, masks, batch_size=8, crop=CROP, seed=11)
    c = SliceLoader(images, masks, batch_size=8, crop=CROP, seed=12)
    assert_batch_equal(as_numpy(a.batch(4)), as_numpy(b.batch(4)))
    assert a.draws(4) != c.draws(4)
    assert a.draws(4) != a.draws(5)


def test_iteration_and_resume():
    images, masks = make_volumes(np.float32)
    first = SliceLoader(images, masks, batch_size=4, crop=CROP, seed=5)
    it = iter(first)
    stream = [as_numpy(next(it)) for _ in range(6)]
    resumed = SliceLoader(images, masks, batch_size=4, crop=CROP, seed=5).start(3)
    it = iter(resumed)
    for want in stream[3:]:
        assert_batch_equal(as_numpy(next(it)), want)
    first.start(1)
    assert_batch_equal(as_numpy(next(iter(first))), stream[1])


def test_buffers_valid_until_next_but_one_call_and_zero_copy():
    images, masks = make_volumes(np.float32)
    loader = SliceLoader(images, masks, batch_size=4, crop=CROP, seed=2)
    x0, y0 = loader.batch(0)
    x1, _ = loader.batch(1)  # batch 0 must survive this call (and its prefetch of step 2)
    want = reference_batch(images, masks, step=0, batch_size=4, crop=CROP, seed=2)
    assert_batch_equal((x0.numpy(), y0.numpy()), want)
    loader.batch(2)
    x3, _ = loader.batch(3)
    assert x3.data_ptr() == x0.data_ptr() and x1.data_ptr() != x0.data_ptr()  # a reused ring of 3 buffers
    assert isinstance(x3, torch.Tensor) and x3.dtype == torch.float32


def test_fg_fraction_puts_foreground_slices_last():
    rng = np.random.default_rng(0)
    images = [rng.random((10, 20, 20), dtype=np.float32) for _ in range(3)]
    masks = [np.zeros((10, 20, 20), np.uint8) for _ in range(3)]
    masks[1][[2, 7], 5:9, 5:9] = 1  # foreground only in volume 1, slices 2 and 7
    loader = SliceLoader(images, masks, batch_size=8, crop=(16, 16), seed=0, fg_fraction=0.3)
    assert loader.n_fg_items == 2  # round(0.3 * 8) = round(2.4)
    np.testing.assert_array_equal(loader.foreground_slices(1), [2, 7])
    for step in range(5):
        draws = loader.draws(step)
        assert all(d[0] == 1 and d[1] in (2, 7) for d in draws[-2:])
        assert_batch_equal(as_numpy(loader.batch(step)),
                           reference_batch(images, masks, step=step, batch_size=8, crop=(16, 16), seed=0,
                                           fg_fraction=0.3))
    plain = SliceLoader(images, masks, batch_size=8, crop=(16, 16), seed=0)
    assert plain.draws(0)[:6] == loader.draws(0)[:6]  # the first items do not depend on fg_fraction


def test_memmap_and_bool_masks(tmp_path):
    images, masks = make_volumes(np.float16)
    np.save(tmp_path / "image.npy", images[0])
    image = np.load(tmp_path / "image.npy", mmap_mode="r")
    loader = SliceLoader([image], [masks[0].astype(bool)], batch_size=4, crop=CROP, seed=9)
    assert_batch_equal(as_numpy(loader.batch(1)),
                       reference_batch([images[0]], [masks[0]], step=1, batch_size=4, crop=CROP, seed=9))


def test_rng_is_splitmix64():
    # splitmix64 reference output: seeding state 0 and stepping gives 0xe220a8397b1dcdaf first
    assert splitmix64_mix(0x9E3779B97F4A7C15) == 0xE220A8397B1DCDAF
    rng = ItemRng(0, 0, 0)
    draws = [rng.below(6) for _ in range(600)]
    assert set(draws) == set(range(6))


def bad_inputs():
    img = np.zeros((4, 8, 8), np.float32)
    msk = np.zeros((4, 8, 8), np.uint8)
    return {
        "shape": (([img], [np.zeros((4, 8, 7), np.uint8)], None), {}, "shape"),
        "image dtype": (([img.astype(np.float64)], [msk], None), {}, "float64"),
        "mask dtype": (([img], [msk.astype(np.int32)], None), {}, "int32"),
        "2d": (([img[0]], [msk[0]], None), {}, "(S, H, W)"),
        "lengths": (([img, img], [msk], None), {}, "masks"),
        "empty slices": (([img], [msk], [[]]), {}, "non-empty"),
        "slice range": (([img], [msk], [[0, 4]]), {}, "out of range"),
        "negative slice": (([img], [msk], [[-1]]), {}, "out of range"),
        "float slices": (([img], [msk], [[0.5]]), {}, "integers"),
        "strided": (([np.zeros((4, 8, 16), np.float32)[:, :, ::2]], [msk], None), {}, "contiguous"),
        "no volumes": (([], [], None), {}, "no volumes"),
        "crop": (([img], [msk], None), {"crop": (0, 8)}, "crop"),
        "fg": (([img], [msk], None), {"fg_fraction": 0.5}, "foreground"),
        "fg range": (([img], [msk], None), {"fg_fraction": 1.5}, "fg_fraction"),
        "threads": (([img], [msk], None), {"num_threads": 0}, "num_threads"),
    }


@pytest.mark.parametrize("case", sorted(bad_inputs()))
def test_bad_input_is_a_one_line_input_error(case):
    args, kwargs, fragment = bad_inputs()[case]
    with pytest.raises(InputError) as info:
        SliceLoader(*args, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_bad_step():
    images, masks = make_volumes(np.float32)
    loader = SliceLoader(images, masks, batch_size=2, crop=CROP, prefetch=False)
    with pytest.raises(InputError, match="step"):
        loader.batch(-1)


def test_nan_slice_pads_with_nan_like_np_min():
    image = np.ones((1, 4, 20), np.float32)
    image[0, 1, 17] = np.nan
    loader = SliceLoader([image], [np.zeros(image.shape, np.uint8)], batch_size=1, crop=(6, 20),
                         prefetch=False)
    x, _ = loader.batch(0)
    assert np.isnan(x[0, 0, 0].numpy()).all() and np.isnan(x[0, 0, 2, 17].item())
    assert_batch_equal(as_numpy((x, _)), reference_batch([image], [np.zeros(image.shape, np.uint8)], step=0,
                                                         batch_size=1, crop=(6, 20)))


def test_core_fill_checks_buffers():
    from fewshot_da._backend import core

    images, masks = make_volumes(np.float32)
    batcher = core.SliceBatcher(images, masks, [np.arange(im.shape[0]) for im in images], 2, 16, 24, 0, 0, 1)
    good = np.empty((2, 1, 16, 24), np.float32)
    for bad, fragment in [(np.empty((2, 1, 16, 23), np.float32), "shape"),
                          (np.empty((2, 1, 16, 24), np.float64), "float32"),
                          (np.empty((2, 1, 16, 48), np.float32)[..., ::2], "C-contiguous")]:
        with pytest.raises(ValueError, match=fragment):
            batcher.fill(0, bad, good, 1)
    with pytest.raises(ValueError, match="alias"):
        batcher.fill(0, good, good, 1)


@pytest.mark.parametrize("value", [2, 255])
def test_mask_values_other_than_0_and_1_are_rejected(value):
    images, masks = make_volumes(np.float32)
    masks[1] = masks[1].copy()
    masks[1][2, 0, 0] = value
    with pytest.raises(InputError, match=rf"masks\[1\] \(id 'scan-1'\): mask value {value} at slice 2"):
        SliceLoader(images, masks, ids=[f"scan-{k}" for k in range(len(images))])
    with pytest.raises(InputError, match=r"masks\[1\]: mask value"):
        SliceLoader(images, masks, fg_fraction=0.5)
