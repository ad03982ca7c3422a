"""load_pretrained: official / wrapped / prefixed state_dicts, strictness and error messages."""
import argparse
import os

import pytest
import torch
import torch.nn as nn

from models import build_model, load_pretrained
from models.checkpoint import WRAPPER_KEYS


def _tiny_nrlgdn(seed):
    torch.manual_seed(seed)
    return build_model("NRL_GDN", num_steps=2, r_channels=(4, 6, 8, 10), r_blocks=1, hd_channels=4)


def _assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("wrap", [None] + list(WRAPPER_KEYS))
@pytest.mark.parametrize("prefix", ["", "module."])
def test_round_trip_bare_wrapped_and_prefixed(tmp_path, wrap, prefix):
    source, target = _tiny_nrlgdn(0), _tiny_nrlgdn(1)
    state = {prefix + key: value for key, value in source.state_dict().items()}
    obj = state if wrap is None else {wrap: state, "epoch": 3, "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "weights.pth"
    torch.save(obj, path)
    assert load_pretrained(target, path) is target
    _assert_same_weights(source, target)
    y, k = torch.rand(1, 3, 12, 12), torch.ones(3, 3) / 9
    with torch.no_grad():
        torch.testing.assert_close(target(y, k), source(y, k), rtol=0, atol=0)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere" / "NRL_GDN.pth"
    with pytest.raises(FileNotFoundError, match="NRL_GDN.pth"):
        load_pretrained(_tiny_nrlgdn(0), path)


def test_mismatch_raises_one_error_listing_all_problems(tmp_path):
    model = _tiny_nrlgdn(0)
    state = model.state_dict()
    del state["h.main.0.weight"]
    state["extra.weight"] = torch.zeros(1)
    state["r.m_tail.weight"] = torch.zeros(3, 5, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_pretrained(_tiny_nrlgdn(1), path)
    message = str(info.value)
    assert "\n" not in message and "bad.pth" in message
    assert "missing keys 1 [h.main.0.weight]" in message
    assert "unexpected keys 1 [extra.weight]" in message
    assert "wrongly-shaped keys 1 [r.m_tail.weight: file (3, 5, 3, 3) vs model (3, 4, 3, 3)]" in message


def test_long_key_lists_are_truncated(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ValueError, match=r"missing keys \d+ \[.*\.\.\. \(\+\d+ more\)\]; unexpected keys 2"):
        load_pretrained(_tiny_nrlgdn(0), path)


def test_non_strict_loads_matching_tensors_only(tmp_path):
    source, target = _tiny_nrlgdn(0), _tiny_nrlgdn(1)
    state = source.state_dict()
    state["r.m_tail.weight"] = torch.zeros(3, 5, 3, 3)
    del state["h.main.0.weight"]
    before = {k: v.clone() for k, v in target.state_dict().items()}
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    load_pretrained(target, path, strict=False)
    after = target.state_dict()
    assert torch.equal(after["r.m_tail.weight"], before["r.m_tail.weight"])
    assert torch.equal(after["h.main.0.weight"], before["h.main.0.weight"])
    assert torch.equal(after["d_alpha.main.0.weight"], source.state_dict()["d_alpha.main.0.weight"])


def test_unreadable_or_non_state_dict_files(tmp_path):
    path = tmp_path / "not_a_dict.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ValueError, match="no state_dict found"):
        load_pretrained(_tiny_nrlgdn(0), path)
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(ValueError, match=r"garbage.pth: cannot be read with torch.load\(weights_only=True\)"):
        load_pretrained(_tiny_nrlgdn(0), path)


class _RunsCodeWhenUnpickled:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_no_reader_unpickles_code(tmp_path):
    """Training resume, evaluation and load_pretrained all refuse a file whose unpickling runs code."""
    from engine.checkpoint import load_training_state, read_checkpoint
    from engine.modeling import ModelSpec, build_for_evaluation
    from utils.config import ConfigError

    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    net = _tiny_nrlgdn(0)
    torch.save({"model": net.state_dict(), "optimizer": None, "epoch": 1, "hook": _RunsCodeWhenUnpickled(marker)},
               path)
    with pytest.raises(ConfigError, match=r"^train_options.resume_model_name: .*evil.pth: cannot be read with "
                                          r"torch.load\(weights_only=True\)"):
        load_training_state(str(path), model=net, optimizer=None, scheduler=None, scaler=None)
    with pytest.raises(ConfigError, match=r"^model.pretrained: .*weights_only=True"):
        read_checkpoint(str(path))
    spec = ModelSpec(name="NRL_GDN", options={}, pretrained=str(path), key="model")
    with pytest.raises(ConfigError, match="weights_only=True"):
        build_for_evaluation(spec, torch.device("cpu"))
    with pytest.raises(ValueError, match="weights_only=True"):
        load_pretrained(net, path)
    assert not marker.exists()


def test_old_torch_whose_weights_only_is_unsound_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    torch.save(_tiny_nrlgdn(0).state_dict(), path)
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu121")
    with pytest.raises(ValueError, match=r"weights.pth: not read: torch 2.5.1\+cu121 cannot load checkpoints safely"):
        load_pretrained(_tiny_nrlgdn(0), path)


def test_weights_only_refuses_pickled_objects(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": argparse.Namespace(lr=1)}, path)  # arbitrary objects need unpickling
    with pytest.raises(ValueError, match="weights_only=True"):
        load_pretrained(_tiny_nrlgdn(0), path)
