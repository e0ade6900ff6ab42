"""Pretrained sources: real shipped weights, head replacement, file round trips, caches and errors."""

from __future__ import annotations

import time

import pytest
import torch

from edgeslim.compress.sources import (
    SOURCES,
    build_model,
    imagenet_class_names,
    load_pretrained,
    load_state_dict_file,
    replace_head,
)
from edgeslim.errors import ConfigError, SourceError, UnknownNameError
from edgeslim.preprocess import preprocess

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lite0():
    return load_pretrained("efficientnet_lite0")


def _logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_registered_sources():
    assert {"efficientnet_lite0", "torchvision", "timm", "file", "tiny"} <= set(SOURCES.names())


def test_efficientnet_lite0_predicts_imagenet_with_its_own_preprocessing(lite0):
    skimage_data = pytest.importorskip("skimage.data")
    assert lite0.arch == "timm:tf_efficientnet_lite0"
    assert lite0.source == "efficientnet_lite0"
    assert lite0.num_classes == 1000 and len(lite0.class_names) == 1000
    pre = lite0.preprocessing
    assert (pre.resize, pre.crop, pre.mean, pre.std) == (256, 224, (127.5,) * 3, (127.5,) * 3)
    x = torch.from_numpy(preprocess([skimage_data.chelsea(), skimage_data.coffee()], pre))
    top1 = _logits(lite0.model, x).argmax(1).tolist()
    assert top1[0] in range(281, 286), f"chelsea (a cat) predicted as {top1[0]} {lite0.class_names[top1[0]]}"
    assert top1[1] == 967, f"coffee predicted as {top1[1]} {lite0.class_names[top1[1]]}"
    assert lite0.class_names[967] == "espresso" and lite0.class_names[282] == "tiger cat"


def test_imagenet_class_names_are_unique():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[134].startswith("crane (") and names[517].startswith("crane (")


def test_head_replacement_keeps_backbone(lite0):
    reference = {k: v.clone() for k, v in lite0.model.state_dict().items()}
    ten = load_pretrained("efficientnet_lite0", num_classes=10)
    assert ten.num_classes == 10 and ten.model.classifier.out_features == 10
    assert ten.class_names == lite0.class_names  # names of the ORIGINAL head travel along
    state = ten.model.state_dict()
    backbone = [k for k in reference if not k.startswith("classifier.")]
    assert len(backbone) > 200
    for k in backbone:
        assert torch.equal(state[k], reference[k]), k
    assert _logits(ten.model, torch.zeros(2, 3, 64, 64)).shape == (2, 10)


@pytest.mark.parametrize(
    "arch",
    ["tiny", "timm:test_resnet", "torchvision:resnet18", "torchvision:mobilenet_v3_small", "torchvision:squeezenet1_0"],
)
def test_build_model_and_replace_head_generic(arch):
    torch.manual_seed(0)
    model = build_model(arch, 7)
    x = torch.randn(1, 3, 64, 64)
    assert _logits(model, x).shape == (1, 7)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert replace_head(model, 3) is model
    after = model.state_dict()
    changed = {k for k in before if k not in after or after[k].shape != before[k].shape}
    # Only the head (weight, bias) changes; every backbone tensor is the same.
    assert 1 <= len(changed) <= 2, changed
    for k in before.keys() - changed:
        assert torch.equal(after[k], before[k]), k
    assert _logits(model, x).shape == (1, 3)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_file_round_trip_identical_logits(tmp_path, suffix):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    src = load_pretrained("tiny", num_classes=4)
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".pt":
        torch.save(src.model.state_dict(), path)
    else:
        save_file(src.model.state_dict(), str(path))
    back = load_pretrained(f"file:{path}", arch="tiny")
    assert back.num_classes == 4 and back.arch == "tiny" and back.source == f"file:{path}"
    assert back.preprocessing == src.preprocessing
    x = torch.randn(3, 3, 16, 16)
    assert torch.equal(_logits(back.model, x), _logits(src.model, x))
    # Asking for another head size replaces the loaded head.
    assert load_pretrained(f"file:{path}", arch="tiny", num_classes=2).num_classes == 2


def test_file_accepts_training_checkpoints(tmp_path):
    torch.manual_seed(2)
    src = load_pretrained("tiny")
    wrapped = {f"module.{k}": v for k, v in src.model.state_dict().items()}  # as saved from DataParallel
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "ckpt.pth")
    back = load_pretrained(f"file:{tmp_path / 'ckpt.pth'}", arch="tiny")
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(_logits(back.model, x), _logits(src.model, x))


def test_file_timm_arch_with_imagenet_head_gets_imagenet_names(tmp_path):
    torch.manual_seed(3)
    model = build_model("timm:test_resnet", 1000)
    torch.save(model.state_dict(), tmp_path / "r.pt")
    back = load_pretrained(f"file:{tmp_path / 'r.pt'}", arch="timm:test_resnet")
    assert back.num_classes == 1000 and back.class_names[967] == "espresso"
    assert back.preprocessing.crop == 160  # the arch's own default


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="arch="):
        load_pretrained(f"file:{tmp_path / 'x.pt'}")
    with pytest.raises(SourceError, match="does not exist"):
        load_pretrained(f"file:{tmp_path / 'missing.pt'}", arch="tiny")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SourceError, match="bad.pt"):
        load_pretrained(f"file:{bad}", arch="tiny")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "nodict.pt")
    with pytest.raises(SourceError, match="does not hold a state dict"):
        load_state_dict_file(tmp_path / "nodict.pt")


def test_file_wrong_arch_lists_keys_and_suggests_the_right_one(tmp_path):
    torch.manual_seed(4)
    torch.save(build_model("torchvision:resnet18", 1000).state_dict(), tmp_path / "r18.pt")
    with pytest.raises(SourceError) as err:
        load_pretrained(f"file:{tmp_path / 'r18.pt'}", arch="torchvision:resnet34")
    msg = str(err.value)
    assert "missing" in msg and "layer1.2.conv1.weight" in msg  # resnet34 has a third block in layer1
    assert "pass arch='torchvision:resnet18'" in msg
    torch.save(build_model("tiny", 10).state_dict(), tmp_path / "tiny.pt")
    with pytest.raises(SourceError, match="unexpected.*pass arch='tiny'"):
        load_pretrained(f"file:{tmp_path / 'tiny.pt'}", arch="timm:test_resnet")


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean 'efficientnet_lite0'"):
        load_pretrained("efficientnet_lit0")
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet18'"):
        load_pretrained("torchvision:resnt18")
    with pytest.raises(UnknownNameError, match="Did you mean 'resnet18'"):
        load_pretrained("timm:resnet1888")
    with pytest.raises(UnknownNameError, match="Did you mean 'timm'"):
        build_model("timmm:resnet18", 3)
    with pytest.raises(ConfigError, match="needs an argument"):
        load_pretrained("torchvision")
    with pytest.raises(ConfigError, match="takes no argument"):
        load_pretrained("tiny:big")
    with pytest.raises(ConfigError, match="num_classes"):
        load_pretrained("tiny", num_classes=0)
    with pytest.raises(ConfigError, match="arch="):
        load_pretrained("tiny", arch="timm:test_resnet")


def test_pretrained_false_is_random_init_with_the_weights_metadata():
    tv = load_pretrained("torchvision:resnet18", pretrained=False, num_classes=5)
    assert tv.arch == "torchvision:resnet18" and tv.num_classes == 5
    pre = tv.preprocessing
    assert (pre.resize, pre.crop) == (256, 224)
    assert pre.mean == pytest.approx((0.485 * 255, 0.456 * 255, 0.406 * 255))
    assert tv.class_names[282] == "tiger cat"
    lite = load_pretrained("efficientnet_lite0", pretrained=False)
    shipped = load_pretrained("efficientnet_lite0")
    assert not torch.equal(lite.model.conv_stem.weight, shipped.model.conv_stem.weight)


def test_torchvision_offline_uncached_fails_fast_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("EDGESLIM_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(SourceError) as err:
        load_pretrained("torchvision:resnet18")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg
    assert "resnet18-f37072fd.pth" in msg and "TORCH_HOME" in msg


def test_torchvision_corrupt_cached_file_is_reported(tmp_path, monkeypatch):
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "resnet18-f37072fd.pth").write_bytes(b"truncated download")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(SourceError, match="delete it"):
        load_pretrained("torchvision:resnet18")


def test_timm_offline_uncached_fails_fast_naming_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(SourceError) as err:
        load_pretrained("timm:test_resnet")
    assert time.monotonic() - start < 10
    msg = str(err.value)
    assert str(tmp_path / "hf" / "hub") in msg and "HF_HUB_OFFLINE" in msg and "timm/test_resnet.r160_in1k" in msg


def test_timm_loads_from_the_hf_cache_offline(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    weights = build_model("timm:test_resnet", 1000).state_dict()
    # The layout huggingface_hub writes: models--<org>--<name>/{refs/main, snapshots/<commit>/<file>}.
    repo = tmp_path / "hf" / "hub" / "models--timm--test_resnet.r160_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    got = load_pretrained("timm:test_resnet", num_classes=3)
    assert got.arch == "timm:test_resnet" and got.num_classes == 3 and got.class_names[967] == "espresso"
    assert torch.equal(got.model.conv1[0].weight, weights["conv1.0.weight"])
    # Preprocessing follows the weights' pretrained_cfg (timm's eval transform: resize floor(crop / crop_pct)).
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg("test_resnet")
    pre = got.preprocessing
    assert pre.crop == cfg.input_size[-1] == 160
    assert pre.resize == int(160 / cfg.crop_pct) and pre.interpolation == cfg.interpolation
    assert pre.mean == pytest.approx(tuple(255 * m for m in cfg.mean))
    assert pre.std == pytest.approx(tuple(255 * s for s in cfg.std))


def test_replaced_head_follows_the_model_dtype():
    model = build_model("torchvision:mobilenet_v3_small", 4).double()
    replace_head(model, 2)
    assert model.classifier[-1].weight.dtype == torch.float64
    assert _logits(model, torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 2)
