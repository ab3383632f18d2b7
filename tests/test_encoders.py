"""ReNet blocks on pretrained-style encoders: ``BRNNUNet(encoder=<timm model>)`` and ``add_renet`` on
segmentation_models_pytorch models; ``predict`` on any input size. Random-init encoders only: nothing is
downloaded (encoder weights from a local file are tested)."""
import sys

import pytest
import torch

import brnnseg_kernels as bk
from brnnseg_kernels.models import BRNNUNet, BRNNUNet3d, add_renet
from tests.utils import assert_verbose_allclose

timm = pytest.importorskip("timm")
smp = pytest.importorskip("segmentation_models_pytorch")


def _params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("encoder", ["resnet18", "efficientnet_b0"])
def test_timm_encoder_unet_forward_backward_state_dict(encoder, capsys):
    torch.manual_seed(0)
    model = BRNNUNet(3, 4, encoder=encoder, rnn_reduction=4)
    x = torch.randn(2, 3, 64, 96)
    y = model(x)
    assert y.shape == (2, 4, 64, 96)
    y.square().mean().backward()
    assert all(p.grad is not None for p in model.skips.parameters())
    assert model.stride == 32
    enc = _params(model.encoder)
    print(f"BRNNUNet(encoder={encoder!r}): {_params(model):,} parameters, encoder {enc:,}")
    assert _params(model) == enc + _params(model.skips) + _params(model.bottleneck) + _params(model.decode) + \
        _params(model.head)
    clone = BRNNUNet(3, 4, encoder=encoder, rnn_reduction=4)
    clone.load_state_dict(model.state_dict())
    model.eval(), clone.eval()
    with torch.no_grad():
        assert_verbose_allclose(clone(x), model(x), rtol=0, atol=0)
    assert "parameters" in capsys.readouterr().out


def test_timm_encoder_weights_from_a_file(tmp_path):
    src = BRNNUNet(1, 2, encoder="resnet18")
    path = tmp_path / "enc.pth"
    torch.save(src.encoder.state_dict(), path)
    model = BRNNUNet(1, 2, encoder="resnet18", encoder_weights=str(path))
    for a, b in zip(src.encoder.state_dict().values(), model.encoder.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="no model 'not_a_model'"):
        BRNNUNet(1, 2, encoder="not_a_model")
    with pytest.raises(ValueError, match="2-D only"):
        BRNNUNet(1, 2, encoder="resnet18", spatial_dims=3)


def test_missing_extras_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r"brnnseg_kernels\[timm\]"):
        BRNNUNet(1, 2, encoder="resnet18")
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)
    with pytest.raises(ImportError, match=r"brnnseg_kernels\[smp\]"):
        add_renet(torch.nn.Linear(2, 2))


def test_timm_unet_compiles():
    torch._dynamo.reset()
    model = BRNNUNet(3, 2, encoder="resnet18", rnn_reduction=4).eval()
    x = torch.randn(1, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_verbose_allclose(compiled(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch", ["Unet", "FPN"])
def test_add_renet_keeps_the_model_then_trains(arch):
    torch.manual_seed(0)
    model = getattr(smp, arch)("resnet18", encoder_weights=None, classes=3).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    n0 = _params(model)
    add_renet(model, where="all", rnn="gru")
    print(f"smp.{arch}(resnet18) + ReNet blocks on every feature map: {n0:,} -> {_params(model):,} parameters")
    with torch.no_grad():
        assert_verbose_allclose(model(x), before, rtol=0, atol=1e-6)  # zero-initialised: same function
    sd = model.state_dict()
    for k, v in original.items():  # the encoder and decoder weights are kept, under their own names
        assert torch.equal(sd[k], v)
    assert set(sd) - set(original) == {k for k in sd if k.startswith("renet.")}
    model.train()
    out = model(x)
    out.square().mean().backward()
    used = model.renet if arch == "Unet" else {k: b for k, b in model.renet.items() if k != "1"}  # FPN skips stride 2
    assert all(p.grad is not None for b in used.values() for p in b.parameters())
    # A checkpoint of the original model loads into the extended one (the blocks stay new).
    fresh = add_renet(getattr(smp, arch)("resnet18", encoder_weights=None, classes=3), where="all")
    missing, unexpected = fresh.load_state_dict(original, strict=False)
    assert not unexpected and all(k.startswith("renet.") for k in missing)
    # state_dict round trip of the extended model.
    other = add_renet(getattr(smp, arch)("resnet18", encoder_weights=None, classes=3), where="all")
    other.load_state_dict(model.state_dict())
    model.eval(), other.eval()
    with torch.no_grad():
        assert_verbose_allclose(other(x), model(x), rtol=0, atol=0)


def test_add_renet_where_and_errors():
    model = smp.Unet("resnet18", encoder_weights=None, classes=2)
    add_renet(model)  # the deepest feature map only
    assert list(model.renet) == [str(len(model.encoder.out_channels) - 1)]
    with pytest.raises(ValueError, match="already has ReNet blocks"):
        add_renet(model)
    with pytest.raises(ValueError, match="where must be"):
        add_renet(smp.Unet("resnet18", encoder_weights=None), where="middle")
    with pytest.raises(ValueError, match="feature indices must be in"):
        add_renet(smp.Unet("resnet18", encoder_weights=None), where=[0])
    with pytest.raises(ValueError, match="segmentation_models_pytorch model"):
        add_renet(torch.nn.Linear(2, 2))
    m = add_renet(smp.Unet("resnet18", encoder_weights=None, classes=2), where=[2, 3], rnn="lstm", reduction=2)
    assert list(m.renet) == ["2", "3"]
    torch._dynamo.reset()
    x = torch.randn(1, 3, 64, 64)
    m.eval()
    compiled = torch.compile(m, backend="aot_eager")
    with torch.no_grad():
        assert_verbose_allclose(compiled(x), m(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,shape", [(lambda: BRNNUNet(1, 2, base_channels=4, depth=3), (1, 1, 37, 29)),
                                        (lambda: BRNNUNet(3, 2, encoder="resnet18", rnn_reduction=4), (2, 3, 50, 70)),
                                        (lambda: BRNNUNet3d(1, 2, base_channels=4, depth=2), (1, 1, 5, 9, 6))],
                         ids=["own-2d", "timm", "own-3d"])
def test_predict_pads_and_crops_any_size(make, shape):
    model = make().eval()
    x = torch.randn(*shape)
    out = model.predict(x)
    assert out.shape == (shape[0], 2) + shape[2:]
    padded, crop = bk.models.pad_to_multiple(x, model.stride)
    with torch.no_grad():
        assert_verbose_allclose(out, model(padded)[crop], rtol=0, atol=0)
        if all(s % model.stride == 0 for s in padded.shape[2:]):
            even = padded
            assert_verbose_allclose(model.predict(even), model(even), rtol=0, atol=0)
    with pytest.raises(ValueError, match="call model.predict"):
        model(x)
