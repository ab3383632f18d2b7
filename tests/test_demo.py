"""The training demo: procedural data, metrics (against MONAI and brute force), the trainer's
checkpoints and resume after a killed run, and `demo --quick` end to end."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from brnnseg_kernels.demo import metrics
from brnnseg_kernels.demo.data import TASKS, SyntheticSegmentation
from brnnseg_kernels.demo.train import TrainConfig, fit, load_checkpoint, save_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT)


@pytest.mark.parametrize("task", TASKS)
def test_generators_are_deterministic_and_valid(task):
    a = SyntheticSegmentation(task, 6, "train", seed=3, size=48).tensors()
    b = SyntheticSegmentation(task, 6, "train", seed=3, size=48).tensors()
    c = SyntheticSegmentation(task, 6, "train", seed=4, size=48).tensors()
    v = SyntheticSegmentation(task, 6, "val", seed=3, size=48).tensors()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], v[0])
    x, y = a
    assert x.shape == y.shape == (6, 1, 48, 48)
    assert x.min() >= 0 and x.max() <= 1 and torch.isfinite(x).all()
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    fg = y.mean((1, 2, 3))
    assert (fg > 0).all()
    if task == "phantom":
        assert ((fg >= 0.05) & (fg <= 0.20)).all(), fg
    assert SyntheticSegmentation(task, 3, "test", seed=3, size=48)[2][0].shape == (1, 48, 48)


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="task must be one of"):
        SyntheticSegmentation("cells", 2)
    with pytest.raises(ValueError, match="split must be"):
        SyntheticSegmentation("phantom", 2, split="dev")
    with pytest.raises(IndexError):
        SyntheticSegmentation("phantom", 2)[2]


def _blobs(n, size=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 1, size // 5, size // 5, generator=g)
    smooth = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return smooth[:, 0] > 0.3


def _brute_force(pred, true, tol):
    """Edge pixels by their definition (a 4-neighbour outside the mask or the image), then every pair."""
    def edge_points(m):
        h, w = m.shape
        pts = []
        for i in range(h):
            for j in range(w):
                if m[i, j] and any(not (0 <= a < h and 0 <= b < w) or not m[a, b]
                                   for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))):
                    pts.append((i, j))
        return torch.tensor(pts, dtype=torch.float64)
    pe, te = edge_points(pred), edge_points(true)
    d = ((pe[:, None] - te[None]) ** 2).sum(-1).sqrt()
    dp, dt = d.min(1).values, d.min(0).values
    prec, rec = (dp <= tol).double().mean().item(), (dt <= tol).double().mean().item()
    f1 = 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)
    return f1, max(torch.quantile(dp, 0.95).item(), torch.quantile(dt, 0.95).item())


def test_boundary_f1_and_hd95_match_their_definitions():
    p, t = _blobs(4, seed=1), _blobs(4, seed=2)
    for a, b in zip(p, t):
        f1, hd = _brute_force(a, b, 2.0)
        assert metrics.boundary_f1(a, b, 2.0) == pytest.approx(f1, abs=1e-6)
        assert metrics._hd95_own(a, b) == pytest.approx(hd, abs=1e-4)
    assert metrics.boundary_f1(p[0], p[0], 2.0) == 1.0


def test_own_metrics_match_monai():
    pytest.importorskip("monai")
    pytest.importorskip("scipy")
    p, t = _blobs(6, seed=5), _blobs(6, seed=6)
    for a, b in zip(p, t):
        ours = metrics.per_image(a, b, use_monai=False)
        monai = metrics.per_image(a, b, use_monai=True)
        for k in ("dice", "iou", "boundary_f1"):
            assert ours[k] == pytest.approx(monai[k], abs=1e-6), k
        assert ours["hd95"] == pytest.approx(monai["hd95"], rel=1e-4, abs=1e-4)


def test_empty_mask_conventions():
    z, o = torch.zeros(8, 8, dtype=torch.bool), torch.zeros(8, 8, dtype=torch.bool)
    o[2:5, 2:5] = True
    assert metrics.per_image(z, z) == dict(dice=1.0, iou=1.0, hd95=0.0, boundary_f1=1.0)
    m = metrics.per_image(z, o)
    assert m["dice"] == 0 and m["boundary_f1"] == 0 and m["hd95"] == pytest.approx(math.hypot(8, 8))


def _tiny_run(folder, epochs, resume=False, stop_after=None):
    from brnnseg_kernels.demo.run import build_model, make_loss

    data = SyntheticSegmentation("long-range", 8, "train", 0, 32).tensors()
    val = SyntheticSegmentation("long-range", 4, "val", 0, 32).tensors()
    model = build_model("brnn-unet", 0, base_channels=4, depth=2)
    cfg = TrainConfig(epochs=epochs, batch_size=4, progress=False)

    def stop(epoch, history):
        if stop_after is not None and epoch + 1 == stop_after:
            raise KeyboardInterrupt  # the run dies right after this epoch's checkpoint

    return fit("m", model, make_loss(2.0), data, val, cfg, str(folder / "m.pt"), resume=resume, on_epoch=stop)


def test_checkpoint_resume_continues_the_same_run(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    full = _tiny_run(tmp_path / "a", 3)
    with pytest.raises(KeyboardInterrupt):
        _tiny_run(tmp_path / "b", 3, stop_after=2)
    ck = load_checkpoint(str(tmp_path / "b" / "m.pt"))  # weights_only=True
    assert ck["epoch"] == 2 and len(ck["history"]["loss"]) == 2
    resumed = _tiny_run(tmp_path / "b", 3, resume=True)
    # The same run: data order, augmentation, optimizer and schedule continue where they stopped.
    assert resumed["loss"] == pytest.approx(full["loss"], rel=1e-5)
    assert resumed["val_dice"] == pytest.approx(full["val_dice"], rel=1e-5)


def test_save_atomic_leaves_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = str(tmp_path / "c.pt")
    save_atomic({"epoch": 1}, path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind


def test_demo_quick_writes_its_outputs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "demo", "--quick", "--out", str(tmp_path),
                          "--no-progress"], env=ENV, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = sorted(os.listdir(tmp_path))
    assert [r.split("-2")[0] for r in runs] == ["long-range", "phantom"], runs
    for r in runs:
        files = set(os.listdir(tmp_path / r))
        assert {"metrics.json", "curves.png", "predictions.png", "unet.pt", "brnn-unet.pt"} <= files
        m = json.loads((tmp_path / r / "metrics.json").read_text())
        for name in ("unet", "brnn-unet"):
            res = m["models"][name]
            assert set(metrics.METRICS) <= set(res["test"]) and res["parameters"] > 0
            assert res["seconds_per_epoch"] > 0 and {"fused", "unfused"} <= set(res["loss_step_ms"])
        assert m["models"]["brnn-unet"]["parameters"] > m["models"]["unet"]["parameters"]
        assert load_checkpoint(str(tmp_path / r / "unet.pt"))["epoch"] == 2
    assert "BRNN-U-Net - U-Net:" in out.stdout and "Dice" in out.stdout


def test_resume_after_a_killed_run(tmp_path):
    """A run killed (SIGKILL) after its first checkpoint resumes from it and finishes the same run."""
    cmd = [sys.executable, "-m", "brnnseg_kernels", "demo", "--quick", "--task", "long-range", "--epochs", "4",
           "--out", str(tmp_path), "--no-progress"]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ckpt = None
    while time.time() < deadline and ckpt is None:
        time.sleep(0.2)
        for r in os.listdir(tmp_path):
            f = tmp_path / r / "unet.pt"
            if f.exists():
                ckpt = f
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert ckpt is not None, "no checkpoint written in time"
    killed = load_checkpoint(str(ckpt))
    done = killed["epoch"]
    assert 1 <= done < 4
    out = subprocess.run(cmd[:-3] + ["--resume", str(ckpt.parent), "--no-progress"], env=ENV, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    ck = load_checkpoint(str(ckpt))
    assert ck["epoch"] == 4 and len(ck["history"]["loss"]) == 4
    assert ck["history"]["loss"][:done] == killed["history"]["loss"]  # continued, not restarted
    assert json.loads((ckpt.parent / "metrics.json").read_text())["models"]["unet"]["history"]["loss"] == \
        pytest.approx(ck["history"]["loss"])


# ---- users' own data: train, predict, bad data, inference on any size ---------------------------------------

def _write_pairs(root, n=4, size=40, seed=0):
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    x, y = SyntheticSegmentation("phantom", n, "train", seed, 48).tensors()
    for i in range(n):
        h = size - 3 * i  # every image its own size
        Image.fromarray((x[i, 0, :h, :size] * 255).byte().numpy()).save(root / "images" / f"case{i}.png")
        Image.fromarray((y[i, 0, :h, :size] * 255).byte().numpy()).save(root / "masks" / f"case{i}.png")


def test_train_and_predict_on_a_folder_of_pngs(tmp_path):
    from PIL import Image

    _write_pairs(tmp_path / "data")
    out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "train", "--data", str(tmp_path / "data"),
                          "--epochs", "1", "--crop", "32", "--depth", "2", "--base-channels", "4", "--out",
                          str(tmp_path / "runs"), "--no-progress"], env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / os.listdir(tmp_path / "runs")[0]
    assert {"brnn-unet.pt", "metrics.json", "curves.png", "predictions.png"} <= set(os.listdir(run))
    assert set(metrics.METRICS) <= set(json.loads((run / "metrics.json").read_text())["validation"])
    for extra in ([], ["--sliding-window", "16"]):
        pred = tmp_path / ("pred" + "".join(extra))
        out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "predict", "--checkpoint", str(run / "brnn-unet.pt"),
                              "--input", str(tmp_path / "data" / "images"), "--out", str(pred), *extra], env=ENV,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        for f in os.listdir(tmp_path / "data" / "images"):
            got = Image.open(pred / f)
            assert got.size == Image.open(tmp_path / "data" / "images" / f).size
            assert set(torch.from_numpy(__import__("numpy").array(got)).unique().tolist()) <= {0, 255}


def test_bad_data_is_reported_by_name(tmp_path):
    import numpy as np
    from PIL import Image

    from brnnseg_kernels.demo.folder import load_folder

    root = tmp_path / "d"
    _write_pairs(root, n=2)
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "images" / "nomask.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / "noimage.png")
    (root / "images" / "broken.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / "broken.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "images" / "small.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(root / "masks" / "small.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "images" / "labels.png")
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(root / "masks" / "labels.png")
    with pytest.warns(UserWarning) as rec:
        xs, ys, stems = load_folder(str(root))
    text = "\n".join(str(w.message) for w in rec)
    assert stems == ["case0", "case1"]
    assert "nomask.png: no mask" in text and "noimage.png: no image" in text
    assert "broken.png: unreadable image" in text and "small: image" in text and "(40, 40) but mask" in text
    assert "labels.png: bad mask" in text and "0/1 or 0/255, found [7]" in text
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(ValueError, match="no images"):
        load_folder(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="is missing"):
        load_folder(str(tmp_path / "nowhere"))
    out = subprocess.run([sys.executable, "-m", "brnnseg_kernels", "train", "--data", str(tmp_path / "empty")],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no images" in out.stderr


def test_pad_to_multiple_and_sliding_window():
    from brnnseg_kernels.models.inference import _sliding_window_own, pad_to_multiple, predict_padded, sliding_window

    net = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.AvgPool2d(2), torch.nn.Upsample(scale_factor=2))
    x = torch.randn(2, 2, 37, 29)
    padded, crop = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (40, 32) and torch.equal(padded[crop], x)
    y = torch.randn(1, 2, 32, 16)
    with torch.no_grad():
        assert torch.equal(predict_padded(net, y, 8), net(y))  # sizes that divide: the plain forward
        assert predict_padded(net, x, 8).shape == (2, 3, 37, 29)
    # The own sliding window against MONAI's (constant weights), where windows overlap unevenly.
    img = torch.randn(1, 2, 40, 56)
    own = _sliding_window_own(net, img, (16, 24), 0.3)
    assert own.shape == (1, 3, 40, 56)
    pytest.importorskip("monai")
    ref = sliding_window(net, img, (16, 24), 0.3, use_monai=True)
    torch.testing.assert_close(own, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window(net, img, (16, 16), 1.0)


def test_torchrun_two_processes_train_identical_weights(tmp_path):
    """`torchrun --nproc_per_node=2` (gloo): the ranks train on their shards and end with the same
    weights; only rank 0 writes the checkpoint."""
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          os.path.join(ROOT, "tests", "_ddp_worker.py"), str(tmp_path)], env=ENV, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    init = build_model_state()
    assert any(not torch.equal(a[k], init[k]) for k in a if a[k].is_floating_point())  # it did train
    assert load_checkpoint(str(tmp_path / "ddp.pt"))["epoch"] == 2


def build_model_state():
    from brnnseg_kernels.demo.run import build_model

    return build_model("brnn-unet", 0, base_channels=4, depth=2).state_dict()


def test_folder_reads_tiff_and_npy(tmp_path):
    """TIFF (16-bit, scaled by its dtype's max) and .npy (float and RGB) images, 0/1 masks."""
    import numpy as np
    from PIL import Image

    from brnnseg_kernels.demo.folder import load_folder

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img16 = (np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 100)
    Image.fromarray(img16).save(tmp_path / "images" / "a.tif")
    np.save(tmp_path / "masks" / "a.npy", (img16 > 30000).astype(np.uint8))
    rgb = np.random.rand(30, 20, 3).astype(np.float32)
    np.save(tmp_path / "images" / "b.npy", rgb)
    Image.fromarray(((img16 > 20000) * 255).astype(np.uint8)).save(tmp_path / "masks" / "b.tif")
    with pytest.warns(UserWarning, match="b.npy: 3 channels, the others have 1"):
        xs, ys, stems = load_folder(str(tmp_path))
    assert stems == ["a"]
    assert xs[0].shape == (1, 30, 20) and xs[0].max().item() == pytest.approx(img16.max() / 65535, rel=1e-6)
    assert torch.equal(ys[0][0], torch.from_numpy((img16 > 30000).astype(np.float32)))
    os.remove(tmp_path / "images" / "a.tif")
    os.remove(tmp_path / "masks" / "a.npy")
    xs, ys, stems = load_folder(str(tmp_path))
    assert stems == ["b"] and xs[0].shape == (3, 30, 20) and torch.allclose(xs[0], torch.from_numpy(rgb).permute(2, 0, 1))
