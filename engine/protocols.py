"""Test protocols: the entries of test_dataset.protocols, or the real data of is_test_real.

The published is_test_* flags were translated into protocol entries {name, noise, blur, scale} when the
config was loaded (utils/config_normalise.py); is_test_real -> real photos only (task `denoise`: real
noisy/clean .mat blocks or folders). Task `sisr` without a kernel_path uses VIRNet's seven SR test
kernels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional


from utils.config import ConfigError
from utils.config_normalise import require_normalised


@dataclass
class Protocol:
    name: str
    kind: str                     # the noise spec's type (uniform, sigma_map, ...) | real | real_noise
    noise: Any = None                           # data.noise.build_noise spec
    blur: Optional[str] = "circular"
    scale: int = 1
    dataset: Any = field(default=None, repr=False)
    image_names: List[str] = field(default_factory=list, repr=False)

    @property
    def size(self) -> int:
        return len(self.dataset)

    def pad(self, item: dict) -> int:
        """Real photos are replicate-padded by 2·floor(ks/2) on every side before restoring."""
        if self.kind != "real":
            return 0
        kh, kw = item["k"].shape[-2:]
        return 2 * (max(kh, kw) // 2)

    def items(self) -> Iterator[dict]:
        for i in range(len(self.dataset)):
            item = dict(self.dataset[i])
            if self.kind == "real":
                item["kernel_label"] = "_real"
            elif self.kind == "real_noise":
                item["kernel_label"] = "0"
            else:
                item["kernel_label"] = str(item.get("kernel_index", 0))
                item["name"] = self.image_names[item["image_index"]]
            yield item


def metric_color(tcfg: Dict[str, Any]) -> str:
    if tcfg["metric_color"] != "auto":
        return tcfg["metric_color"]
    return "luma" if tcfg["is_gray_scale"] else "rgb"


def protocol_list(tcfg: Dict[str, Any]) -> List[Protocol]:
    """The protocols to run, without data (cheap; used for validation and docs)."""
    task = tcfg["task"]
    if task == "sisr" and tcfg["scale"] < 2:
        raise ConfigError(f"test_dataset.scale: task 'sisr' needs a scale >= 2, got {tcfg['scale']}")
    if task != "sisr" and tcfg["scale"] != 1:
        raise ConfigError(f"test_dataset.scale: {tcfg['scale']} needs task 'sisr' (the task is '{task}')")
    if tcfg["is_test_real"]:
        if task == "denoise":
            return [Protocol("real_noise", "real_noise", blur=None)]
        if task == "sisr":
            raise ConfigError("test_dataset.is_test_real: there is no real-photo protocol for task 'sisr'; "
                              "set it to false")
        return [Protocol("real", "real", blur=None)]
    return [_protocol(entry, i, task) for i, entry in enumerate(tcfg["protocols"])]


def _protocol(entry: Dict[str, Any], i: int, task: str) -> Protocol:
    if task == "denoise" and entry["blur"] is not None:
        raise ConfigError(f"test_dataset.protocols[{i}].blur: task 'denoise' has no blur; set it to null or leave it out")
    noise = entry["noise"]
    kind = noise.get("type") if isinstance(noise, dict) else ("none" if noise is None else "uniform")
    return Protocol(entry["name"], kind, noise, entry["blur"], int(entry["scale"]))


def _test_images(tcfg, gray: bool):
    from data.default_data import default_test_images
    from data.images import image_names, list_images

    if not tcfg["test_data"]:
        items = list(default_test_images(gray=gray).items())
    else:
        folder = os.path.join(tcfg["root_path"], tcfg["test_data"])
        if not os.path.isdir(folder):
            raise ConfigError(f"test_dataset.test_data: image folder not found: '{folder}' "
                              "(root_path + test_data)")
        try:
            paths = list_images(folder)
            items = list(zip(image_names(paths), paths))
        except ValueError as err:
            raise ConfigError(f"test_dataset.test_data: {err}") from None
    if tcfg["max_images"]:
        items = items[:tcfg["max_images"]]
    return items


def _test_kernels(tcfg, task: str = "deblur"):
    from data.default_data import default_kernels
    from data.kernels import load_kernels, virnet_sr_test_kernels

    path = tcfg["kernel_path"]
    if not path and task == "sisr":
        kernels = [k for k, _ in virnet_sr_test_kernels(tcfg["scale"])]
    elif not path:
        kernels = default_kernels()
    else:
        if not os.path.exists(path):
            raise ConfigError(f"test_dataset.kernel_path: kernel file not found: '{path}'")
        try:
            kernels = load_kernels(path)
        except (KeyError, ValueError) as err:
            raise ConfigError(f"test_dataset.kernel_path: {err.args[0] if err.args else err}") from None
    indices = tcfg["kernel_indices"] or list(range(len(kernels)))
    bad = [i for i in indices if i >= len(kernels)]
    if bad:
        raise ConfigError(f"test_dataset.kernel_indices: {bad} out of range for {len(kernels)} kernels")
    return [kernels[i] for i in indices], indices


class _Selected:
    """A TestDataset whose kernel indices are reported as the original file indices."""

    def __init__(self, dataset, indices):
        self.dataset, self.indices = dataset, indices

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        item["kernel_index"] = self.indices[item["kernel_index"]]
        return item


def build_protocols(cfg) -> List[Protocol]:
    """Protocols with their datasets (images × kernels, noise seeded per image/kernel)."""
    from data.datasets import TestDataset

    require_normalised(cfg)
    tcfg = cfg["test_dataset"]
    task = tcfg["task"]
    protocols = protocol_list(tcfg)
    gray = tcfg["num_channels"] == 1
    if protocols[0].kind == "real_noise":
        protocols[0].dataset = _real_noise_set(tcfg, gray)
        return protocols
    if protocols[0].kind == "real":
        protocols[0].dataset = _real_photo_set(tcfg, gray)
        return protocols
    images = _test_images(tcfg, gray)
    kernels, indices = _test_kernels(tcfg, task) if task != "denoise" else (None, [0])
    for p in protocols:
        try:
            ds = TestDataset(images, kernels, p.noise, seed=tcfg["seed"], gray=gray, blur=p.blur, scale=p.scale,
                             clip=tcfg["clip_noisy"])
        except (KeyError, ValueError) as err:
            raise ConfigError(f"test_dataset ({p.name}): {err.args[0] if err.args else err}") from None
        p.dataset = _Selected(ds, indices)
        p.image_names = list(ds.images.names)
    return protocols


def _real_photo_set(tcfg, gray: bool):
    """Real blurred photos: a folder (root_path/test_data) paired with a folder of kernel images, or one
    photo file with one kernel file."""
    from data.datasets import RealDataset
    from data.kernels import load_kernels

    photos, kernels = os.path.join(tcfg["root_path"], tcfg["test_data"]), tcfg["kernel_path"]
    if tcfg["test_data"] and os.path.isfile(photos):
        if not kernels or not os.path.isfile(kernels):
            raise ConfigError(f"test_dataset.kernel_path: kernel file of the photo '{photos}' not found: '{kernels}'")
        try:
            found = load_kernels(kernels)
        except (KeyError, ValueError) as err:
            raise ConfigError(f"test_dataset.kernel_path: {err.args[0] if err.args else err}") from None
        if len(found) != 1:
            raise ConfigError(f"test_dataset.kernel_path: '{kernels}' holds {len(found)} kernels; give the one "
                              f"kernel of the photo '{photos}'")
        return RealDataset([(Path(photos), found[0])], gray=gray)
    if not tcfg["test_data"] or not os.path.isdir(photos):
        raise ConfigError(f"test_dataset.test_data: folder of real blurred photos (or one photo) not found: '{photos}'")
    if not kernels or not os.path.isdir(kernels):
        raise ConfigError(f"test_dataset.kernel_path: folder of kernel images not found: '{kernels}'")
    try:
        dataset = RealDataset(photos, kernels=kernels, gray=gray)
    except ValueError as err:
        raise ConfigError(f"test_dataset.kernel_path: {err}") from None
    if tcfg["max_images"]:
        dataset.pairs = dataset.pairs[:tcfg["max_images"]]
    return dataset


def _real_noise_set(tcfg, gray: bool):
    """Real noisy/clean test pairs: .mat blocks (noisy_mat/clean_mat), else the folder root_path/test_data
    with noisy/ and gt/ images."""
    from engine.noisy_blocks import MatBlocks

    if tcfg["noisy_mat"] or tcfg["clean_mat"] or not tcfg["test_data"]:
        return MatBlocks.from_config(tcfg, gray)
    from data.paired import paired_items

    folder = os.path.join(tcfg["root_path"], tcfg["test_data"])
    try:
        return paired_items(folder, gray, tcfg["max_images"])
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"test_dataset.test_data: {err}") from None
