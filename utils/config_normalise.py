"""Published flags -> nested specs, once, when a config is loaded (`utils.config.load_config`).

The published configs choose their data with flags (train_options.is_train_*, train_dataset.noise_type /
sigma_min / sigma_max / kernel_path, val_dataset.noise_level / sigma_map_type, test_dataset.is_test_*);
ours may give the specs directly (train_dataset.degradation, val_dataset.degradation / protocol,
test_dataset.protocols). `normalise` decides here, and only here, which one applies, and writes the
result back as specs, which are all the engine reads:

- val_dataset.task, test_dataset.task: resolved (empty: train_dataset.task).
- train_dataset.degradation: the given spec, else the flags' (none for paired real noise), with the
  task's defaults (blur; `sisr`: clipping). A `sisr` spec without `scale` takes the model's when the
  data is built (`engine.tasks.complete_spec`).
- val_dataset: synthetic validation is either `degradation` (image i degraded with rng (0, i)) or, task
  `deblur` only, a complete `protocol` {noise, blur, scale} applied with kernel `kernel_index` of
  `kernel_path` (rng (0, i, 0), as the test sets). Real noisy/clean validation needs neither.
- test_dataset.protocols: complete entries {name, noise, blur, scale}, from the is_test_* flags when
  empty; [] with is_test_real (the real data replaces every synthetic protocol).

Flag values that cannot be translated are one-line ConfigErrors here. Whether a spec fits its task and
the model (a blur for denoising, the SR scale) is checked where the data is built, so a training run is
not stopped by the test section it does not use. Normalising a normalised config changes nothing.
"""
from __future__ import annotations

from typing import Any, Dict, List

from utils.config import ConfigError

NORMALISED = "_normalised"      # bookkeeping key (dropped by utils.config.public)
TASK_BLUR = {"deblur": "circular", "denoise": None, "sisr": "symmetric"}
SR_KERNEL_SIZE = 21             # VIRNet's SR kernels
VIRNET_VAL_KERNEL_STD = 1.6     # VIRNet's in-training SR validation: one isotropic Gaussian for every scale


def normalise(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """Translate the published flags of a merged config into specs, in place; returns cfg."""
    for section in ("val_dataset", "test_dataset"):
        cfg[section]["task"] = cfg[section]["task"] or cfg["train_dataset"]["task"]
    _normalise_train(cfg)
    _normalise_val(cfg)
    _normalise_test(cfg["test_dataset"])
    cfg[NORMALISED] = True
    return cfg


def require_normalised(cfg: Dict[str, Any]) -> None:
    """The engine's guard: a config that did not pass `normalise` would silently lack its specs."""
    if not cfg.get(NORMALISED):
        raise AssertionError("config is not normalised; build it with utils.config.load_config or from_dict")


def with_task_defaults(task: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """A degradation spec with its task's defaults filled in (a new dict)."""
    spec = dict(spec)
    spec.setdefault("blur", TASK_BLUR[task])
    if task == "sisr":
        spec.setdefault("clip", True)
    return spec


# ----------------------------------------------------------------------------------------- training
def _normalise_train(cfg) -> None:
    train = cfg["train_dataset"]
    if train["paired"] and not train["degradation"]:
        return  # real noisy/clean pairs: nothing is synthesised
    spec = train["degradation"] or _train_spec_from_flags(cfg)
    train["degradation"] = with_task_defaults(train["task"], spec)


def _train_spec_from_flags(cfg) -> Dict[str, Any]:
    train = cfg["train_dataset"]
    if train["task"] == "sisr":  # VIRNet's SR recipe; the scale is the model's
        return {"kernels": {"type": "sr_gaussian", "size": SR_KERNEL_SIZE}, "blur": "symmetric",
                "noise": {"type": "uniform", "sigma_range": _sigma_range(train)}, "clip": True}
    noise = _train_noise(cfg)
    if train["task"] == "denoise":
        return {"noise": noise, "blur": None}
    path = train["kernel_path"]
    kernels = {"type": "file", "path": path, "augment": True} if path else {"type": "random"}
    return {"kernels": kernels, "noise": noise, "blur": "circular", "quantize_blur": train["quantize_blur"]}


def _sigma_range(train) -> List[float]:
    low, high = train["sigma_min"], train["sigma_max"]
    if low > high:
        raise ConfigError(f"train_dataset.sigma_min ({low}) is larger than sigma_max ({high})")
    return [low, high]


def _train_noise(cfg) -> Dict[str, Any]:
    """Training noise of the published flags train_options.is_train_* and the train_dataset keys."""
    train, options = cfg["train_dataset"], cfg["train_options"]
    sigma_range = _sigma_range(train)
    if options["is_train_poisson_gaussian"]:
        return {"type": "poisson_gaussian", "peak": train["poisson_peak"], "sigma": train["sigma_max"]}
    if options["is_train_impulse"]:
        return {"type": "impulse", "fraction": train["noise_intensity"]}
    if not options["is_train_gauss"]:
        raise ConfigError("train_options: no training noise selected; set is_train_gauss, is_train_poisson_gaussian "
                          "or is_train_impulse to true (or give train_dataset.degradation)")
    if train["noise_type"] == "uniform":
        return {"type": "uniform", "sigma_range": sigma_range}
    return {"type": "mixture", "components": [  # NRL-GDN: 6/9 one σ per patch, 3/9 four quadrants
        {"weight": 6, "noise": {"type": "regions", "layout": "one", "sigma_range": sigma_range}},
        {"weight": 3, "noise": {"type": "regions", "layout": "four", "sigma_range": sigma_range}}]}


# ----------------------------------------------------------------------------------------- validation
def _normalise_val(cfg) -> None:
    val = cfg["val_dataset"]
    if val["paired"] or val["noisy_mat"] or val["clean_mat"]:
        return  # real noisy/clean pairs: nothing is synthesised
    if val["degradation"] and val["protocol"]:
        raise ConfigError("val_dataset.protocol: val_dataset.degradation is given too; keep one of them")
    task = val["task"]
    if val["degradation"]:
        val["degradation"] = with_task_defaults(task, val["degradation"])
    elif task == "deblur":
        val["protocol"] = {"noise": _val_noise(cfg), "blur": "circular", "scale": 1, **val["protocol"]}
    elif val["protocol"]:
        raise ConfigError(f"val_dataset.protocol: task '{task}' validates with val_dataset.degradation; "
                          "give the spec there")
    elif task == "denoise":
        val["degradation"] = {"noise": _val_noise(cfg), "blur": None}
    else:  # VIRNet's SR validation at the model's scale
        val["degradation"] = {"kernels": {"type": "isotropic_gaussian", "size": SR_KERNEL_SIZE,
                                          "std": VIRNET_VAL_KERNEL_STD},
                              "noise": _val_noise(cfg), "blur": "symmetric", "clip": True}


def _val_noise(cfg) -> Dict[str, Any]:
    val = cfg["val_dataset"]
    if val["sigma_map_type"]:
        return {"type": "sigma_map", "map": val["sigma_map_type"], "range": list(cfg["test_dataset"]["sigma_map_range"])}
    return {"type": "uniform", "sigma": val["noise_level"]}


# ----------------------------------------------------------------------------------------- test
def _normalise_test(test) -> None:
    if test["is_test_jpeg_compression"]:
        raise ConfigError("test_dataset.is_test_jpeg_compression: the JPEG protocol is not supported "
                          "(the published code has none either); set it to false")
    if test["is_test_real"]:
        test["protocols"] = []
        return
    entries = test["protocols"] or _flag_protocols(test)
    test["protocols"] = [{"name": str(entry["name"]), "noise": entry.get("noise"),
                          "blur": entry.get("blur", TASK_BLUR[test["task"]]),
                          "scale": entry.get("scale", test["scale"])} for entry in entries]


def _flag_protocols(test) -> List[Dict[str, Any]]:
    """Every enabled is_test_* flag, in the published order (the published script ran only the first)."""
    sisr = test["task"] == "sisr"
    noises = _flag_noises(test)
    if not noises:
        raise ConfigError("test_dataset: no protocol enabled; set one of is_test_gauss, is_test_nonuniform, "
                          "is_test_poisson_gaussian, is_test_impulse or is_test_real to true")
    return [{"name": (f"x{test['scale']}_" if sisr else "") + name, "noise": noise,
             "blur": None if test["task"] == "denoise" else test["blur"], "scale": test["scale"] if sisr else 1}
            for name, noise in noises]


def _flag_noises(test) -> List[tuple]:
    """(protocol name, noise spec) of every enabled flag."""
    out = []
    if test["is_test_gauss"]:
        out += [(f"uniform_{_num(level)}", {"type": "uniform", "sigma": float(level)})
                for level in _as_list(test["test_noise_level"])]
    if test["is_test_nonuniform"]:
        low, high = _map_range(test["sigma_map_range"])
        for kind in (k.replace("-", "_") for k in _as_list(test["sigma_map_type"])):
            out.append((f"sigma_map_{kind}_{_num(low)}-{_num(high)}",
                        {"type": "sigma_map", "map": kind, "range": [low, high],
                         "interpolation": test["sigma_map_interpolation"]}))
    if test["is_test_poisson_gaussian"]:
        peak = test["poisson_peak"]
        out += [(f"poisson_gaussian_peak{_num(peak)}_{_num(level)}",
                 {"type": "poisson_gaussian", "peak": peak, "sigma": float(level)})
                for level in _as_list(test["test_noise_level"])]
    if test["is_test_impulse"]:
        for fraction in _as_list(test["test_noise_intensity"]):
            if not 0 <= fraction <= 1:
                raise ConfigError(f"test_dataset.test_noise_intensity: expected a fraction in [0, 1], got {fraction}")
            out.append((f"impulse_{_num(fraction)}", {"type": "impulse", "fraction": float(fraction)}))
    return out


def _map_range(value) -> tuple:
    if len(value) != 2 or value[0] < 0 or value[0] > value[1]:
        raise ConfigError(f"test_dataset.sigma_map_range: expected [low, high] with 0 <= low <= high, got {value}")
    return float(value[0]), float(value[1])


def _as_list(value) -> list:
    return list(value) if isinstance(value, list) else [value]


def _num(v: float) -> str:
    return f"{v:g}"
