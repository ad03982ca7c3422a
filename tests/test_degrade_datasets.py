"""Blur/degradation, image reading and datasets (data/degrade.py, data/images.py, data/datasets.py)."""
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torch.utils.data import DataLoader

from data.datasets import RealDataset, TestDataset, TrainDataset, augmented_copy, collate, pad_kernel
from data.degrade import Degradation, blur, build_degradation, circular_blur, valid_crop
from data.images import default_images, list_images, read_image
from data.kernels import KernelSampler, dihedral

RNG = np.random.default_rng(0)


def _ndimage_blur(x, k, mode):
    return np.stack([ndimage.convolve(c, k, mode=mode) for c in x])


# ---------------------------------------------------------------- blur and Degradation

@pytest.mark.parametrize("ksize", [(9, 9), (6, 4)])
def test_circular_blur_equals_ndimage_wrap(ksize):
    x = torch.rand(3, 40, 36, generator=torch.Generator().manual_seed(1))
    k = RNG.random(ksize)
    out = Degradation(k, None, blur="circular")(x, np.random.default_rng(0))
    ref = _ndimage_blur(x.double().numpy(), k / k.sum(), "wrap")
    assert out["y"].dtype == torch.float32 and np.abs(out["y"].double().numpy() - ref).max() < 1e-6
    assert torch.equal(out["x"], x) and out["k"].shape == (1,) + ksize
    assert abs(float(out["k"].sum()) - 1) < 1e-6 and torch.all(out["sigma"] == 0)


def test_circular_blur_batches_strided_inputs_and_kernels_larger_than_the_image():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 36, 40, dtype=torch.float64, generator=g).transpose(-2, -1)  # 40×36, not contiguous
    k = torch.rand(2, 1, 7, 4, dtype=torch.float64, generator=g)  # one kernel per image, even width
    out = circular_blur(x, k)
    for n in range(2):
        ref = _ndimage_blur(x[n].numpy(), k[n, 0].numpy(), "wrap")
        assert np.abs(out[n].numpy() - ref).max() < 1e-12
    big = torch.rand(1, 1, 9, 8, dtype=torch.float64, generator=g)  # wraps around a 6×5 image more than once
    small = torch.rand(1, 2, 6, 5, dtype=torch.float64, generator=g)
    ref = _ndimage_blur(small[0].numpy(), big[0, 0].numpy(), "wrap")
    assert np.abs(circular_blur(small, big)[0].numpy() - ref).max() < 1e-12


@pytest.mark.parametrize("mode,nd_mode", [("replicate", "nearest"), ("symmetric", "reflect"),
                                          ("reflect", "mirror"), ("constant", "constant")])
def test_boundary_blurs_equal_ndimage(mode, nd_mode):
    x = torch.rand(2, 1, 30, 33, dtype=torch.float64)
    k = torch.rand(2, 1, 7, 4, dtype=torch.float64)
    out = blur(x, k, mode)
    for n in range(2):
        assert np.abs(out[n].numpy() - _ndimage_blur(x[n].numpy(), k[n, 0].numpy(), nd_mode)).max() < 1e-10


def test_valid_blur_crops_x_to_the_fully_covered_region():
    x = torch.rand(3, 32, 30, dtype=torch.float64)
    k = RNG.random((5, 8))
    out = Degradation(k, None, blur="valid")(x, np.random.default_rng(0))
    rows, cols = valid_crop(5, 8, 32, 30)
    assert out["y"].shape == (3, 28, 23) and out["x"].shape == (3, 28, 23)
    assert torch.equal(out["x"], x[:, rows, cols])
    full = _ndimage_blur(x.numpy(), k / k.sum(), "constant")  # zero padding never reaches the valid part
    assert np.abs(out["y"].numpy() - full[:, rows, cols]).max() < 1e-10


def test_denoising_and_noise_order():
    x = torch.rand(1, 16, 16, dtype=torch.float64)
    out = Degradation(None, {"type": "uniform", "sigma": 10}, blur=None)(x, np.random.default_rng(3))
    assert out["k"].shape == (1, 1, 1) and float(out["k"]) == 1.0
    noise = out["y"] - x
    assert torch.allclose(out["sigma"], torch.tensor(10 / 255, dtype=torch.float64))
    assert 0.5 < float(noise.std()) / (10 / 255) < 1.5


def test_quantized_blur_matches_published_uint8_convolution():
    u8 = (RNG.random((3, 24, 24)) * 255).astype(np.uint8)
    k = RNG.random((7, 7))
    k /= k.sum()
    out = Degradation(k, None, quantize_blur=True)(torch.from_numpy(u8 / 255.0).float(), np.random.default_rng(0))
    ref = np.stack([ndimage.convolve(c, k, mode="wrap") for c in u8])  # uint8 output truncates
    diff = np.abs(out["y"].numpy() * 255 - ref)
    assert diff.max() <= 1 + 1e-3 and np.mean(diff > 1e-3) < 0.01


def test_fixed_seed_degradation_is_reproducible_and_sampler_kernels_are_used():
    deg = build_degradation({"kernels": {"type": "random"}, "blur": "circular",
                             "noise": {"type": "sigma_map", "map": "gauss_mix", "range": [5, 25]}})
    x = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    a, b = deg(x, np.random.default_rng(9)), deg(x, np.random.default_rng(9))
    assert all(torch.equal(a[key], b[key]) for key in ("x", "y", "k", "sigma"))
    k = a["k"][0].double().numpy()
    assert abs(k.sum() - 1) < 1e-6 and k.shape == (25, 25)
    clean = _ndimage_blur(x.double().numpy(), k, "wrap")
    z = (a["y"].double().numpy() - clean) / a["sigma"].double().numpy()
    assert 0.9 < z.std() < 1.1  # what is left after the blur is noise with the returned σ-map


@pytest.mark.parametrize("clip", [False, True])
def test_degradation_returns_the_noise_sample(clip):
    x = torch.rand(3, 32, 28, generator=torch.Generator().manual_seed(3))
    k = RNG.random((5, 5))
    deg = Degradation(k, {"type": "regions", "layout": "four", "sigma_range": [20, 60]}, clip=clip)
    out = deg(x, np.random.default_rng(4))
    clean = _ndimage_blur(x.double().numpy(), k / k.sum(), "wrap")
    noise = out["noise"].double().numpy()
    assert out["noise"].shape == x.shape and out["noise"].dtype == x.dtype
    z = noise / out["sigma"].double().numpy()  # the sample follows the σ-map ...
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1) < 0.05
    noisy = clean + noise  # ... and y is the blurred x plus exactly this sample, clipped afterwards if asked
    assert np.abs(out["y"].double().numpy() - (np.clip(noisy, 0, 1) if clip else noisy)).max() < 1e-6
    if clip:  # some pixels were clipped, and the sample is the one from before the clipping
        assert ((noisy < 0) | (noisy > 1)).any()
    batch = collate([out, deg(x, np.random.default_rng(5))])
    assert batch["noise"].shape == (2, 3, 32, 28) and torch.equal(batch["noise"][0], out["noise"])


def test_build_degradation_errors():
    with pytest.raises(KeyError, match=r"unknown key\(s\) \['kernel'\]"):
        build_degradation({"kernel": "x.mat"})
    with pytest.raises(ValueError, match="blur must be one of"):
        Degradation(np.ones((3, 3)), None, blur="periodic")
    with pytest.raises(ValueError, match="needs kernels"):
        Degradation(None, None, blur="circular")


def test_super_resolution_degradation():
    pytest.importorskip("utils.imresize")
    x = torch.rand(3, 33, 34, generator=torch.Generator().manual_seed(0))
    deg = build_degradation({"kernels": {"type": "sr_gaussian", "scale": 2}, "blur": "symmetric", "scale": 2,
                             "noise": {"type": "uniform", "sigma": 2.55}, "clip": True})
    out = deg(x, np.random.default_rng(0))
    assert out["x"].shape == (3, 32, 34) and out["y"].shape == (3, 16, 17) and out["scale"] == 2
    assert out["kinfo"].shape == (3,) and float(out["y"].min()) >= 0 and float(out["y"].max()) <= 1
    assert out["noise"].shape == out["y"].shape  # the low-resolution noise sample
    assert abs(float(out["noise"].std()) / (2.55 / 255) - 1) < 0.15  # 1632 samples: 1σ of the estimate 1.8 %
    batch = collate([out, deg(x, np.random.default_rng(1))])
    assert batch["kinfo"].shape == (2, 3) and batch["noise"].shape == (2, 3, 16, 17) and batch["scale"] == 2


# ---------------------------------------------------------------- images

def _write_png16(path, a, filters=(0,)):
    """16-bit PNG writer with PNG row filters (so the reader's unfiltering is exercised)."""
    a = np.asarray(a, dtype=">u2")
    h, w = a.shape[:2]
    raw = a.reshape(h, -1).view(np.uint8).reshape(h, -1).astype(np.int64)
    bpp = 2 * (a.shape[2] if a.ndim == 3 else 1)
    rows = []
    for y in range(h):
        cur, up = raw[y], raw[y - 1] if y else np.zeros_like(raw[0])
        left = np.concatenate([np.zeros(bpp, np.int64), cur[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int64), up[:-bpp]])
        p = left + up - upleft
        pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
        f = filters[y % len(filters)]
        pred = [0, left, up, (left + up) // 2, paeth][f]
        rows.append(bytes([f]) + ((cur - pred) % 256).astype(np.uint8).tobytes())

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if a.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
                     + chunk(b"IEND", b""))


def test_read_image_modes(tmp_path):
    rgb = (RNG.random((6, 7, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    img = read_image(tmp_path / "rgb.png")
    assert img.dtype == torch.float32 and img.shape == (3, 6, 7)
    assert torch.equal(img, torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    gray = read_image(tmp_path / "rgb.png", gray=True)
    ref = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32) / 255  # ITU-R 601 luma, rounded
    assert gray.shape == (1, 6, 7) and np.abs(gray[0].numpy() - ref).max() <= 1 / 255 + 1e-6
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    g3 = read_image(tmp_path / "g.png")
    assert g3.shape == (3, 6, 7) and torch.equal(g3[0], g3[2])  # replicated as published
    rgba = np.dstack([rgb, np.full((6, 7), 7, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert torch.equal(read_image(tmp_path / "rgba.png"), img)  # alpha dropped
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(tmp_path / "pal.png")
    pal = read_image(tmp_path / "pal.png")
    expected = np.asarray(Image.open(tmp_path / "pal.png").convert("RGB"), dtype=np.float32) / 255
    assert torch.equal(pal, torch.from_numpy(expected).permute(2, 0, 1))


def test_read_16bit_png(tmp_path):
    g16 = (RNG.random((5, 6)) * 65535).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert torch.allclose(read_image(tmp_path / "g16.png", gray=True)[0], torch.from_numpy(g16 / 65535.0).float())
    c16 = (RNG.random((7, 9, 3)) * 65535).astype(np.uint16)
    _write_png16(tmp_path / "c16.png", c16, filters=(0, 1, 2, 3, 4))
    img = read_image(tmp_path / "c16.png")
    assert torch.allclose(img, torch.from_numpy(c16 / 65535.0).permute(2, 0, 1).float(), atol=1e-7)


def test_image_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"cannot read image .*bad\.png") as info:
        read_image(tmp_path / "bad.png")
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="no images"):
        list_images(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        list_images(tmp_path / "missing")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "readme.txt").write_text("no images here")
    return d


def test_list_and_default_images(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.txt", "d.bmp"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "d.bmp"]
    imgs = default_images(size=64)
    assert len(imgs) >= 4 and all(v.shape == (3, 64, 64) and 0 <= v.min() and v.max() <= 1 for v in imgs.values())
    assert all(v.shape == (1, 64, 64) for v in default_images(gray=True, size=64).values())


# ---------------------------------------------------------------- datasets

def _images(n=3, size=40):
    g = torch.Generator().manual_seed(5)
    return [(f"im{i}", torch.rand(3, size, size + 4 * i, generator=g)) for i in range(n)]


def _train_set(**kw):
    deg = Degradation(KernelSampler(size=9), {"type": "regions", "layout": "four"}, blur="circular")
    return TrainDataset(_images(), 24, deg, seed=7, length=8, **kw)


def _batches(loader):
    return [{k: v for k, v in b.items()} for b in loader]


def _same_batches(a, b):
    return len(a) == len(b) and all(
        all(torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x) for x, y in zip(a, b))


def test_train_dataset_is_deterministic_per_seed_epoch_index():
    ds = _train_set()
    a, b = ds[3], ds[3]
    assert a["x"].shape == (3, 24, 24) and a["k"].shape == (1, 9, 9)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[2]["y"], a["y"])
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["y"], a["y"])
    ds.set_epoch(0)
    assert torch.equal(ds[3]["y"], a["y"])


def test_dataloader_workers_do_not_change_training_batches_or_test_sets():
    ds = _train_set()
    ds.set_epoch(2)
    kwargs = dict(batch_size=4, shuffle=False, collate_fn=collate)
    single = _batches(DataLoader(ds, num_workers=0, **kwargs))
    multi = _batches(DataLoader(ds, num_workers=2, **kwargs))
    assert _same_batches(single, multi)
    kernels = [np.ones((3, 3)), RNG.random((5, 4))]
    ts = TestDataset(_images(2, 32), kernels,
                     {"type": "sigma_map", "map": "bumps", "range": [0, 80]}, seed=1)
    kwargs = dict(batch_size=1, collate_fn=collate)
    assert _same_batches(_batches(DataLoader(ts, num_workers=0, **kwargs)),
                         _batches(DataLoader(ts, num_workers=2, **kwargs)))


def test_test_dataset_layout_and_order_independence(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.fromarray((RNG.random((20, 22, 3)) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    k = RNG.random((2, 5, 5))
    np.save(tmp_path / "k.npy", k)
    ts = TestDataset(folder, tmp_path / "k.npy", {"type": "uniform", "sigma": 7.65}, seed=0)
    assert len(ts) == 6
    last_first = ts[5]
    items = [ts[i] for i in range(6)]
    assert torch.equal(items[5]["y"], last_first["y"])
    assert [it["name"] for it in items] == ["00_k0", "01_k0", "02_k0", "00_k1", "01_k1", "02_k1"]
    assert items[4]["image_index"] == 1 and items[4]["kernel_index"] == 1
    assert np.allclose(items[4]["k"][0].numpy(), k[1] / k[1].sum(), atol=1e-7)
    x = read_image(folder / "01.png").double().numpy()
    noise = items[4]["y"].double().numpy() - _ndimage_blur(x, k[1] / k[1].sum(), "wrap")
    assert 0.8 < noise.std() / (7.65 / 255) < 1.2
    # one image, different kernels: different noise draws
    assert not torch.equal(items[0]["y"] - items[0]["x"], items[3]["y"] - items[3]["x"])


def test_collate_pads_kernels_around_their_centre():
    x = torch.rand(1, 3, 20, 20, dtype=torch.float64)
    for small, big in [((3, 3), (7, 9)), ((4, 6), (7, 9)), ((5, 2), (8, 9))]:
        k = torch.rand(1, 1, *small, dtype=torch.float64)
        padded = pad_kernel(k, *big)
        assert padded.shape[-2:] == big and torch.isclose(padded.sum(), k.sum())
        assert torch.allclose(blur(x, padded, "circular"), blur(x, k, "circular"), atol=1e-12)
    items = [{"y": torch.zeros(3, 4, 4), "k": torch.ones(1, h, w) / (h * w), "name": n, "image_index": i}
             for i, (h, w, n) in enumerate([(3, 3, "a"), (5, 7, "b")])]
    batch = collate(items)
    assert batch["k"].shape == (2, 1, 5, 7) and batch["name"] == ["a", "b"]
    assert torch.equal(batch["image_index"], torch.tensor([0, 1])) and batch["y"].shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="'y' has different shapes"):
        collate([items[0], dict(items[1], y=torch.zeros(3, 5, 5))])


def test_real_dataset_pairs_by_name_or_order(tmp_path):
    photos, kernels = tmp_path / "blurred", tmp_path / "kernels"
    photos.mkdir()
    kernels.mkdir()
    for name in ("a", "b"):
        Image.fromarray((RNG.random((16, 18, 3)) * 255).astype(np.uint8)).save(photos / f"{name}.png")
    k_b = (RNG.random((7, 7)) * 255).astype(np.uint8)
    Image.fromarray(k_b).save(kernels / "b.png")
    Image.fromarray((RNG.random((5, 5)) * 255).astype(np.uint8)).save(kernels / "a.png")
    ds = RealDataset(photos, kernels=kernels)
    item = ds[1]
    assert set(item) == {"y", "k", "name", "image_index"} and item["name"] == "b"
    assert np.allclose(item["k"][0].numpy(), k_b / k_b.sum(), atol=1e-6)
    (kernels / "b.png").rename(kernels / "zz.png")  # names differ now: sorted order a<->a, b<->zz
    assert RealDataset(photos, kernels=kernels)[1]["k"].shape == (1, 7, 7)
    (kernels / "zz.png").unlink()
    with pytest.raises(ValueError, match="cannot pair 2 images with 1 kernels"):
        RealDataset(photos, kernels=kernels)


def test_augmented_copy_is_the_dihedral_transform_in_its_own_memory():
    img = torch.rand(3, 7, 5, generator=torch.Generator().manual_seed(6))
    for mode in range(8):
        out = augmented_copy(img, mode)
        assert torch.equal(out, dihedral(img, mode)) and out.is_contiguous()
        assert out.untyped_storage().data_ptr() != img.untyped_storage().data_ptr()


def test_items_do_not_alias_cached_images():
    images = _images(1, 24)
    source = images[0][1].clone()
    ds = TrainDataset(images, None, Degradation(None, None, blur=None), augment=False, cache=True)
    ds[0]["x"].zero_()
    ts = TestDataset(images, None, None)
    ts[0]["x"].zero_()
    assert torch.equal(ds.images[0], source) and torch.equal(ts.images[0], source)


def test_holdout_images_validate_and_are_never_trained_on(tmp_path):
    from engine.datasets import build_train_loader, build_val_set
    from utils.config import ConfigError, from_dict

    for i in range(5):
        Image.fromarray(RNG.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    cfg = from_dict({"train_dataset": {"root_path": str(tmp_path), "holdout": 2, "patch_size": 16, "num_workers": 0},
                     "val_dataset": {"use_holdout": True, "patch_size": 16, "degradation": {
                         "kernels": {"type": "random", "size": 5}, "noise": {"type": "uniform", "sigma": 5}}}})
    _, _, trained = build_train_loader(cfg, 1, 0, 1)
    assert len(trained) == 3
    assert [item["name"] for item in build_val_set(cfg)] == ["im3", "im4"]
    cfg["train_dataset"]["holdout"] = 5
    with pytest.raises(ConfigError, match="train_dataset.holdout: 5 held-out images leave none of the 5"):
        build_val_set(cfg)
    cfg["train_dataset"]["holdout"] = 0
    with pytest.raises(ConfigError, match="val_dataset.use_holdout: set train_dataset.holdout"):
        build_val_set(cfg)
    cfg["train_dataset"]["holdout"], cfg["val_dataset"]["root_path"] = 2, str(tmp_path)
    with pytest.raises(ConfigError, match="val_dataset.use_holdout: .*leave val_dataset.root_path empty"):
        build_val_set(cfg)
