"""Augmentation in the C++ slice loader against the SciPy oracle, hand-derived cases, and the options."""
import math

import numpy as np
import pytest
import yaml

from fewshot_da.data.augment import PRESETS, AugmentOptions, augment_options
from fewshot_da.data.loader import SliceLoader
from fewshot_da.data.loader_reference import (
    ItemRng,
    draw_augment,
    noise_z,
    reference_augmented_batch,
    reference_batch,
)
from fewshot_da.errors import InputError

CROP = (16, 24)
# slices larger than the crop, smaller in one dim, smaller in both, odd sizes
SHAPES = [(9, 40, 50), (6, 20, 33), (5, 13, 24), (7, 11, 9)]


def make_volumes(dtype, seed=0):
    rng = np.random.default_rng(seed)
    images = [(rng.standard_normal(s) * 0.7 + 0.3 * k).astype(dtype) for k, s in enumerate(SHAPES)]
    masks = []
    for s in SHAPES:  # blobs, so that many pixels sit near the 0.5 threshold after a warp
        yy, xx = np.mgrid[:s[1], :s[2]]
        masks.append(np.stack([((yy - s[1] / 2) ** 2 + (xx - s[2] / 3 - z) ** 2 < (s[1] / 3) ** 2)
                               for z in range(s[0])]).astype(np.uint8))
    return images, masks


def random_options(seed) -> AugmentOptions:
    """Every transform on with a random probability and random ranges."""
    r = np.random.default_rng(seed)
    def lo_hi(a, b):
        return tuple(sorted(r.uniform(a, b, 2)))

    return AugmentOptions(
        rotation_deg=r.uniform(0, 45), rotation_p=r.uniform(0.3, 1), rot90_p=r.uniform(0, 0.5),
        zoom_range=lo_hi(0.6, 1.5), zoom_p=r.uniform(0.3, 1), shear=r.uniform(0, 0.3), shear_p=r.uniform(0, 1),
        flip_p=(r.uniform(0, 1), r.uniform(0, 1)), translate=r.uniform(0, 5), translate_p=r.uniform(0, 1),
        bias_field=r.uniform(0, 0.6), bias_field_p=r.uniform(0, 1), gamma_range=lo_hi(0.5, 2.0),
        gamma_p=r.uniform(0.3, 1), contrast_range=lo_hi(0.6, 1.4), contrast_p=r.uniform(0, 1),
        brightness=r.uniform(0, 0.5), brightness_p=r.uniform(0, 1), noise_sd_range=lo_hi(0, 0.4),
        noise_p=r.uniform(0, 1))


def batch(loader, step):
    x, y = loader.batch(step)
    return x.numpy().copy(), y.numpy().copy()


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("num_threads", [1, 3])
@pytest.mark.parametrize("crop", [CROP, (7, 13), (40, 64)])
def test_matches_scipy_oracle(dtype, num_threads, crop):
    images, masks = make_volumes(dtype)
    for seed in range(3):
        options = random_options(seed)
        loader = SliceLoader(images, masks, batch_size=10, crop=crop, seed=seed, num_threads=num_threads,
                             augment=options, prefetch=False)
        for step in (0, 3, 2**40 + 1):
            x, y = batch(loader, step)
            want_x, want_y, params = reference_augmented_batch(images, masks, step=step,
                                                               spec=options.core_spec(crop), batch_size=10,
                                                               crop=crop, seed=seed)
            assert loader.augment_params(step) == params  # bit-identical draws, recomputed in Python
            np.testing.assert_allclose(x, want_x, rtol=0, atol=1e-5)
            np.testing.assert_array_equal(y, want_y)
            assert set(np.unique(y)) <= {0.0, 1.0}


def test_oracle_cases_cover_warp_pad_and_every_transform():
    # the parameters drawn in test_matches_scipy_oracle exercise what they claim to
    images, masks = make_volumes(np.float32)
    seen = set()
    for seed in range(3):
        for crop in (CROP, (7, 13), (40, 64)):
            spec = random_options(seed).core_spec(crop)
            _, _, params = reference_augmented_batch(images, masks, step=0, spec=spec, batch_size=10, crop=crop,
                                                     seed=seed)
            for p in params:
                seen |= {k for k in ("rot90", "flip_y", "flip_x", "noise_sd", "brightness") if p[k]}
                seen |= {k for k, ident in (("zoom", 1), ("gamma", 1), ("contrast", 1), ("angle_deg", 0),
                                            ("shear_y", 0), ("translate_y_px", 0)) if p[k] != ident}
                seen |= {"bias"} if any(p["bias"]) else set()
                seen |= {"centred"} if p["centred"] else {"random crop"}
    assert seen == {"rot90", "flip_y", "flip_x", "noise_sd", "brightness", "zoom", "gamma", "contrast",
                    "angle_deg", "shear_y", "translate_y_px", "bias", "centred", "random crop"}


def test_thread_count_and_prefetch_do_not_change_batches():
    images, masks = make_volumes(np.float16)
    options = random_options(7)
    batches = []
    for threads, prefetch in ((1, False), (2, False), (4, True), (7, True)):
        loader = SliceLoader(images, masks, batch_size=9, crop=CROP, seed=5, num_threads=threads,
                             augment=options, prefetch=prefetch)
        batches.append([batch(loader, s) for s in range(3)])
        loader.close()
    for other in batches[1:]:
        for (x0, y0), (x1, y1) in zip(batches[0], other):
            np.testing.assert_array_equal(x0, x1)
            np.testing.assert_array_equal(y0, y1)


def test_identity_options_and_mode_none_give_the_plain_batches():
    images, masks = make_volumes(np.float32)
    plain = SliceLoader(images, masks, batch_size=8, crop=CROP, seed=2, prefetch=False)
    off = SliceLoader(images, masks, batch_size=8, crop=CROP, seed=2, prefetch=False,
                      augment=random_options(0).replace(mode="none"))
    identity = SliceLoader(images, masks, batch_size=8, crop=CROP, seed=2, prefetch=False,
                           augment=AugmentOptions())  # everything at probability 0
    assert off.augment is None and identity.augment is not None
    for step in (0, 1):
        want = reference_batch(images, masks, step=step, batch_size=8, crop=CROP, seed=2)
        for loader in (plain, off, identity):
            x, y = batch(loader, step)
            np.testing.assert_array_equal(x, want[0])
            np.testing.assert_array_equal(y, want[1])
        assert plain.draws(step) == identity.draws(step)  # augmentation draws come after the crop


def test_mode_switches_groups_off():
    images, masks = make_volumes(np.float32)
    options = random_options(1).replace(rotation_p=1.0, gamma_p=1.0)
    for mode in ("spatial", "intensity"):
        loader = SliceLoader(images, masks, batch_size=6, crop=CROP, seed=1, augment=options.replace(mode=mode))
        for p in loader.augment_params(0):
            assert (p["angle_deg"] != 0) == (mode == "spatial")
            assert (p["gamma"] != 1) == (mode == "intensity")
        loader.close()


def square_loader(options, crop=(12, 12), dtype=np.float32):
    rng = np.random.default_rng(3)
    image = rng.standard_normal((3, 30, 31)).astype(dtype)
    mask = (rng.random((3, 30, 31)) > 0.5).astype(np.uint8)
    kwargs = {"batch_size": 16, "crop": crop, "seed": 4, "prefetch": False}
    return (SliceLoader([image], [mask], augment=options, **kwargs), SliceLoader([image], [mask], **kwargs))


def test_quarter_turns_and_flips_are_exact_index_maps():
    # M = R90 = [[0, -1], [1, 0]] reads source (h - (c - h), h + (r - h)): np.rot90(crop, -1)
    for options, expect in ((AugmentOptions(rot90_p=1.0), None),
                            (AugmentOptions(flip_p=(1.0, 0.0)), np.flipud),
                            (AugmentOptions(flip_p=(0.0, 1.0)), np.fliplr)):
        loader, plain = square_loader(options)
        x, y = batch(loader, 0)
        px, py = batch(plain, 0)
        for i, p in enumerate(loader.augment_params(0)):
            f = expect or (lambda a, k=p["rot90"]: np.rot90(a, -k))
            np.testing.assert_array_equal(x[i, 0], f(px[i, 0]))
            np.testing.assert_array_equal(y[i, 0], f(py[i, 0]))


def test_integer_translation_shifts_the_window():
    loader, _ = square_loader(AugmentOptions(translate=4.0, translate_p=1.0), crop=(8, 8))
    rng = np.random.default_rng(3)
    image = rng.standard_normal((3, 30, 31)).astype(np.float32)
    for p in loader.augment_params(0)[:3]:
        assert abs(p["translate_y_px"]) <= 4 and abs(p["translate_x_px"]) <= 4
    # a hand-made parameter set through the oracle: shift (2, -3) == the window moved by (2, -3)
    a = draw_augment(ItemRng(0, 0, 0), AugmentOptions().core_spec((8, 8)))
    a.update(translate_y_px=2.0, translate_x_px=-3.0)
    from fewshot_da.data.loader_reference import augment_item
    x, _ = augment_item(image[1], np.zeros((30, 31), np.uint8), 10, 10, (8, 8), a)
    np.testing.assert_array_equal(x, image[1, 12:20, 7:15])


def test_brightness_and_noise_by_hand():
    loader, plain = square_loader(AugmentOptions(brightness=0.5, brightness_p=1.0))
    x, _ = batch(loader, 0)
    px, _ = batch(plain, 0)
    for i, p in enumerate(loader.augment_params(0)):
        np.testing.assert_allclose(x[i, 0], px[i, 0] + p["brightness"], rtol=0, atol=1e-6)
    image = np.zeros((1, 64, 64), np.float32)
    loader = SliceLoader([image], [np.zeros_like(image, np.uint8)], batch_size=8, crop=64, prefetch=False,
                         augment=AugmentOptions(noise_sd_range=(0.5, 0.5), noise_p=1.0))
    x, _ = batch(loader, 0)
    assert abs(x.mean()) < 0.01 and abs(x.std() - 0.5) < 0.01
    assert np.abs(x).max() <= 0.5 * 3.4642  # Irwin-Hall(4) is bounded at sqrt(12) sd
    np.testing.assert_array_equal(x[0, 0], (0.5 * noise_z(loader.augment_params(0)[0]["noise_key"], 64 * 64)
                                            .astype(np.float64)).astype(np.float32).reshape(64, 64))


def test_gamma_keeps_the_slice_range_and_background():
    image = np.linspace(-1, 3, 2 * 20 * 20, dtype=np.float32).reshape(2, 20, 20)
    loader = SliceLoader([image], [np.zeros_like(image, np.uint8)], batch_size=8, crop=(30, 30),
                         prefetch=False, augment=AugmentOptions(gamma_range=(0.5, 2.0), gamma_p=1.0))
    x, _ = batch(loader, 0)
    for i, p in enumerate(loader.augment_params(0)):
        sl = image[p["slice"]]
        assert p["gamma"] != 1
        assert x[i].min() == sl.min()  # padding stays at the slice minimum
        assert x[i].max() == pytest.approx(sl.max(), abs=1e-6)


def test_masks_must_be_zero_or_one():
    images, masks = make_volumes(np.float32)
    masks[2] = masks[2].copy()
    masks[2][3, 4, 5] = 2
    with pytest.raises(InputError) as info:
        SliceLoader(images, masks, ids=["a", "b", "IXI002", "d"])
    message = str(info.value)
    assert "masks[2]" in message and "IXI002" in message and "value 2" in message and "\n" not in message
    SliceLoader(images, masks, slices=[None, None, [0, 1, 2, 4], None])  # slice 3 is never read: accepted


def test_presets_and_resolver():
    assert set(PRESETS) == {"dart20-aug", "ultrasound-aug", "intensity"}
    dart = augment_options("dart20-aug")
    assert dart.mode == "spatial" and dart.flip_p == (0.3, 0.3) and dart.rot90_p == 0.3
    assert augment_options("intensity").mode == "intensity" and augment_options("intensity").gamma_p > 0
    both = augment_options("ultrasound-aug+intensity")
    assert both.mode == "both" and both.shear_p == 0.5 and both.gamma_range == (0.7, 1.5)
    assert augment_options("dart20-aug", mode="none").enabled is False
    assert augment_options(None).enabled is False
    assert augment_options(dart, mode="both").mode == "both"
    # config.yaml round trip
    text = yaml.safe_dump(both.as_dict())
    assert augment_options(yaml.safe_load(text)) == both
    spec = augment_options("ultrasound-aug").core_spec((200, 100))
    assert spec["translate_y_px"] == pytest.approx(20.0) and spec["translate_x_px"] == pytest.approx(10.0)
    assert spec["gamma_p"] == 0.0  # spatial preset, mode spatial: intensity off


@pytest.mark.parametrize("spec, kwargs, fragment", [
    ("flips", {}, "dart20-aug"),
    ("dart20-aug", {"mode": "sometimes"}, "both"),
    ({"rotation_degrees": 10}, {}, "rotation_degrees"),
    ({"gamma_p": 1.5}, {}, "gamma_p"),
    ({"zoom_range": (1.2, 0.8)}, {}, "zoom_range"),
    ({"zoom_range": (0.0, 1.0)}, {}, "zoom_range"),
    ({"flip_p": (0.5,)}, {}, "flip_p"),
    ({"shear": -0.1}, {}, "shear"),
    ({"translate_unit": "mm"}, {}, "translate_unit"),
    ({"rotation_deg": math.nan}, {}, "rotation_deg"),
    (3, {}, "preset name"),
])
def test_bad_options_are_one_line_input_errors(spec, kwargs, fragment):
    with pytest.raises(InputError) as info:
        augment_options(spec, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)
