"""Test protocols from the published test_dataset flags (or an explicit `protocols` list).

Published selection (configs/test_*.json): is_test_real -> real photos only; otherwise every enabled
flag runs — is_test_gauss (each test_noise_level), is_test_nonuniform (each sigma_map_type),
is_test_poisson_gaussian, is_test_impulse (each test_noise_intensity). The published script ran the
first enabled one; ours runs them all into one table.

The task (test_dataset.task, else train_dataset.task) shapes every protocol: `deblur` blurs with
test_dataset.blur, `denoise` does not blur (is_test_real: real noisy/clean .mat blocks), `sisr` blurs,
downsamples by test_dataset.scale and, without a kernel_path, uses VIRNet's seven SR test kernels.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional


from utils.config import ConfigError


@dataclass
class Protocol:
    name: str
    kind: str                     # uniform | sigma_map | poisson_gaussian | impulse | custom | real | real_noise
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


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _num(v: float) -> str:
    return f"{v:g}"


def protocol_list(tcfg: Dict[str, Any], task: str = "deblur") -> List[Protocol]:
    """The protocols to run, without data (cheap; used for validation and docs)."""
    if tcfg["is_test_jpeg_compression"]:
        raise ConfigError("test_dataset.is_test_jpeg_compression: the JPEG protocol is not supported "
                          "(the published code has none either); set it to false")
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
    if tcfg["protocols"]:
        return [_custom(entry, i, task, tcfg["scale"]) for i, entry in enumerate(tcfg["protocols"])]
    out = _flag_protocols(tcfg)
    blur = None if task == "denoise" else tcfg["blur"]
    for p in out:
        p.blur = blur
        if task == "sisr":
            p.scale = tcfg["scale"]
            p.name = f"x{p.scale}_{p.name}"
    return out


def _flag_protocols(tcfg: Dict[str, Any]) -> List[Protocol]:
    out = []
    if tcfg["is_test_gauss"]:
        for level in _as_list(tcfg["test_noise_level"]):
            out.append(Protocol(f"uniform_{_num(level)}", "uniform", {"type": "uniform", "sigma": float(level)}))
    if tcfg["is_test_nonuniform"]:
        lo, hi = _range(tcfg["sigma_map_range"])
        for kind in _as_list(tcfg["sigma_map_type"]):
            kind = kind.replace("-", "_")
            out.append(Protocol(f"sigma_map_{kind}_{_num(lo)}-{_num(hi)}", "sigma_map",
                                {"type": "sigma_map", "map": kind, "range": [lo, hi],
                                 "interpolation": tcfg["sigma_map_interpolation"]}))
    if tcfg["is_test_poisson_gaussian"]:
        for level in _as_list(tcfg["test_noise_level"]):
            out.append(Protocol(f"poisson_gaussian_peak{_num(tcfg['poisson_peak'])}_{_num(level)}", "poisson_gaussian",
                                {"type": "poisson_gaussian", "peak": tcfg["poisson_peak"], "sigma": float(level)}))
    if tcfg["is_test_impulse"]:
        for pc in _as_list(tcfg["test_noise_intensity"]):
            if not 0 <= pc <= 1:
                raise ConfigError(f"test_dataset.test_noise_intensity: expected a fraction in [0, 1], got {pc}")
            out.append(Protocol(f"impulse_{_num(pc)}", "impulse", {"type": "impulse", "fraction": float(pc)}))
    if not out:
        raise ConfigError("test_dataset: no protocol enabled; set one of is_test_gauss, is_test_nonuniform, "
                          "is_test_poisson_gaussian, is_test_impulse or is_test_real to true")
    return out


def _range(value) -> tuple:
    if len(value) != 2 or value[0] < 0 or value[0] > value[1]:
        raise ConfigError(f"test_dataset.sigma_map_range: expected [low, high] with 0 <= low <= high, got {value}")
    return float(value[0]), float(value[1])


def _custom(entry, i: int, task: str = "deblur", scale: int = 1) -> Protocol:
    key = f"test_dataset.protocols[{i}]"
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{key}: expected an object with 'name', 'noise' and optional 'blur', 'scale'")
    unknown = set(entry) - {"name", "noise", "blur", "scale"}
    if unknown:
        raise ConfigError(f"{key}: unknown field(s) {sorted(unknown)}; expected name, noise, blur, scale")
    default_blur = {"denoise": None, "sisr": "symmetric"}.get(task, "circular")
    blur = entry.get("blur", default_blur)
    if task == "denoise" and blur is not None:
        raise ConfigError(f"{key}.blur: task 'denoise' has no blur; set it to null or leave it out")
    return Protocol(str(entry["name"]), "custom", entry.get("noise"), blur, int(entry.get("scale", scale)))


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
    from data.datasets import RealDataset, TestDataset
    from engine.tasks import task_of

    tcfg = cfg["test_dataset"]
    task = task_of(cfg, "test_dataset")
    protocols = protocol_list(tcfg, task)
    gray = tcfg["num_channels"] == 1
    if protocols[0].kind == "real_noise":
        protocols[0].dataset = _real_noise_set(tcfg, gray)
        return protocols
    if protocols[0].kind == "real":
        folder = os.path.join(tcfg["root_path"], tcfg["test_data"])
        if not tcfg["test_data"] or not os.path.isdir(folder):
            raise ConfigError(f"test_dataset.test_data: folder of real blurred photos not found: '{folder}'")
        if not tcfg["kernel_path"] or not os.path.isdir(tcfg["kernel_path"]):
            raise ConfigError(f"test_dataset.kernel_path: folder of kernel images not found: '{tcfg['kernel_path']}'")
        try:
            dataset = RealDataset(folder, kernels=tcfg["kernel_path"], gray=gray)
        except ValueError as err:
            raise ConfigError(f"test_dataset.kernel_path: {err}") from None
        if tcfg["max_images"]:
            dataset.pairs = dataset.pairs[:tcfg["max_images"]]
        protocols[0].dataset = dataset
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
