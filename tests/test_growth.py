"""Growing a trained model to more DRUNet ResBlocks per scale keeps its output and trains the new blocks."""
import pytest
import torch

from engine.modeling import load_initial_weights
from models import build_model
from models.drunet import DRUNet
from models.growth import grown_state_dict, load_grown
from utils.config import ConfigError

SMALL = dict(r_channels=(4, 8, 8, 16), hd_channels=4, num_steps=2, early_stop=False)


def _nrlgdn(r_blocks, **extra):
    return build_model("NRL_GDN", **{**SMALL, "r_blocks": r_blocks, **extra})


def _randomised(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def _inputs():
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(2, 3, 20, 28, generator=gen)
    k = torch.rand(2, 1, 5, 5, generator=gen)
    return y, k / k.sum(dim=(-2, -1), keepdim=True)


@pytest.mark.parametrize("nb_from,nb_to", [(1, 2), (2, 3), (1, 3), (2, 2)])
def test_grown_model_computes_what_the_source_computed(nb_from, nb_to, tmp_path):
    source = _randomised(_nrlgdn(nb_from), seed=nb_from)
    path = tmp_path / "small.pth"
    torch.save({"model": source.state_dict(), "model_select": "NRL_GDN"}, path)
    grown = load_grown(_nrlgdn(nb_to), path)
    y, k = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(grown(y, k), source(y, k), rtol=0, atol=1e-6)
    # the source's tensors arrive under their new names, e.g. the m_down1 stride-2 conv at index nb_to
    assert torch.equal(grown.r.m_down1[nb_to].weight, source.r.state_dict()[f"m_down1.{nb_from}.weight"])


def test_extra_blocks_start_as_identity_and_receive_gradients():
    source = _randomised(DRUNet(nc=(4, 8, 8, 16), nb=1), seed=3)
    grown = DRUNet(nc=(4, 8, 8, 16), nb=2)
    grown.load_state_dict(grown_state_dict(grown, source.state_dict()))
    extra = [grown.m_down1[1], grown.m_body[1], grown.m_up1[2]]
    for block in extra:
        assert torch.count_nonzero(block.res[2].weight) == 0
        assert torch.count_nonzero(block.res[0].weight) > 0   # fresh first conv, so the block can learn
    grown(torch.rand(1, 3, 16, 16)).square().mean().backward()
    assert all(block.res[2].weight.grad.abs().sum() > 0 for block in extra)


def test_growing_refuses_to_drop_blocks_or_change_widths():
    deep = _nrlgdn(2).state_dict()
    with pytest.raises(ValueError, match="2 ResBlocks per scale, more than the model's 1"):
        grown_state_dict(_nrlgdn(1), deep)
    with pytest.raises(ValueError, match="wrongly-shaped keys"):
        grown_state_dict(_nrlgdn(2, hd_channels=6), _nrlgdn(1).state_dict())
    with pytest.raises(ValueError, match="no DRUNet"):
        grown_state_dict(_nrlgdn(2), {"h.main.0.weight": torch.zeros(4, 3, 5, 5)})


def test_engine_init_grow(tmp_path):
    path = tmp_path / "small.pth"
    source = _randomised(_nrlgdn(1), seed=5)
    torch.save(source.state_dict(), path)
    with pytest.raises(ConfigError, match="does not fit the model"):
        load_initial_weights(_nrlgdn(2), str(path))          # a strict load fails ...
    grown = _nrlgdn(2)
    load_initial_weights(grown, str(path), grow=True)         # ... growing fits
    assert torch.equal(grown.h.main[0].weight, source.h.main[0].weight)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read with torch.load"):
        load_initial_weights(_nrlgdn(2), str(tmp_path / "broken.pth"), grow=True)
    with pytest.raises(ConfigError, match="set model.init_from"):
        load_initial_weights(_nrlgdn(2), "", grow=True)
    with pytest.raises(ConfigError, match=r"model.init_from: .* more than the model's 1"):
        load_initial_weights(_nrlgdn(1), str(_save(_nrlgdn(2), tmp_path / "deep.pth")), grow=True)


def _save(model, path):
    torch.save(model.state_dict(), path)
    return path
