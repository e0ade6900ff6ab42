"""Model building shared by every stage: architecture ids, the classifier head, prunable layers, pruned widths.

Compression, export and the torch runtime all build a network from ``Manifest.arch`` and look up its layers, so
this lives below them (as timm's ``_builder.py`` does) and imports none of them. torch, timm and torchvision are
imported inside the functions.

- :data:`ARCHS`, :func:`parse_arch`, :func:`build_model`: architecture families (``timm:<name>``,
  ``torchvision:<name>``, ``tiny``) and a network with random weights for an id.
- :func:`prunable_layers`, :func:`classifier_name`, :func:`find_head`: the Conv / Linear layers and the head.
- :func:`structure_spec`, :func:`restore_structure`, :func:`rebuild_model`: record the widths of a channel-pruned
  model and build it again (how an artifact's ``model.safetensors`` is loaded).
- :func:`split_at`: the model as ``suffix(prefix(x))`` at a named layer (frozen early stages whose outputs are
  computed once and cached during fine-tuning).
"""

from __future__ import annotations

import math
from collections import Counter
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from .artifact import Preprocessing
from .errors import ArtifactError, ConfigError, SourceError, UnknownNameError
from .registry import Registry, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

__all__ = [
    "ARCHS", "Family", "build_model", "classifier_name", "find_head", "imagenet_class_names", "num_outputs",
    "frozen_modules", "parse_arch", "prunable_layers", "rebuild_model", "restore_structure", "split_at",
    "structure_spec",
]


# --------------------------------------------------------------------------------------------- layers


def prunable_types() -> tuple[type, ...]:
    """The layer types whose weights can be pruned: Conv1d/2d/3d and Linear."""
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def prunable_layers(model: "nn.Module") -> list[tuple[str, "nn.Module"]]:
    """``(name, module)`` of every Conv / Linear layer with a weight, in registration order."""
    import torch

    kinds = prunable_types()
    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, kinds) and isinstance(getattr(m, "weight", None), torch.Tensor)
    ]


def classifier_name(model: "nn.Module", layers: list[tuple[str, "nn.Module"]] | None = None) -> str | None:
    """The classifier among ``layers`` (default: :func:`prunable_layers`); the one head-finding rule.

    ``model.get_classifier()`` (timm, TinyNet) when it is one of the layers; for a head that is a container (a
    Sequential), its last layer; otherwise the last layer (torchvision registers the head last by convention).
    """
    from torch import nn

    layers = prunable_layers(model) if layers is None else layers
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            head = get()
        except Exception:  # noqa: BLE001 - a model's own helper may not apply; fall back to the last layer
            head = None
        for name, m in layers:
            if m is head:
                return name
        if isinstance(head, nn.Module):  # e.g. a Sequential head: its last prunable layer
            inner = [n for n, m in layers if any(m is sub for sub in head.modules())]
            if inner:
                return inner[-1]
    return layers[-1][0] if layers else None


#: Architecture families by name (``timm``, ``torchvision``, ``tiny``): the part before ``:`` of an arch id.
ARCHS: Registry["Family"] = Registry("architecture family")





def find_head(model: "nn.Module") -> tuple[str, "nn.Module"]:
    """(qualified name, module) of the classifier head: :func:`classifier_name` over the Linear / Conv2d layers.

    Raises:
        SourceError: the model has neither.
    """
    from torch import nn

    layers = [(n, m) for n, m in model.named_modules() if n and isinstance(m, (nn.Linear, nn.Conv2d))]
    name = classifier_name(model, layers)
    if name is None:
        raise SourceError(
            f"cannot find a classifier head in {type(model).__name__}: it has no get_classifier() and no Linear or "
            "Conv2d layer; give it a reset_classifier(num_classes) method"
        )
    return name, model.get_submodule(name)


def num_outputs(model: "nn.Module") -> int:
    _, head = find_head(model)
    return int(getattr(head, "out_features", None) or head.out_channels)


# --------------------------------------------------------------------------------------------- architectures


class Family:
    """One family of architecture ids (``<family>:<name>``)."""

    needs_name = True

    def check(self, name: str) -> str:
        """Validate ``name`` and return it, or raise UnknownNameError."""
        return name

    def build(self, name: str, num_classes: int | None) -> "nn.Module":
        raise NotImplementedError

    def preprocessing(self, name: str, model: "nn.Module") -> Preprocessing:
        raise NotImplementedError

    def class_names(self, name: str, model: "nn.Module") -> list[str]:
        return [str(i) for i in range(num_outputs(model))]

    def candidates(self, name: str) -> list[str]:
        """Names close to ``name`` in this family (for "did you mean this arch?" after a failed load)."""
        return []


def _interpolation(value: str) -> str:
    return value if value in ("bilinear", "bicubic", "nearest") else "bilinear"


class _TimmFamily(Family):
    def check(self, name: str) -> str:
        import timm
        from timm.models import split_model_name_tag

        base, tag = split_model_name_tag(name)
        if not timm.is_model(base):
            raise UnknownNameError(
                f"unknown timm model '{base}'.{did_you_mean(base, timm.list_models())}"
                " See timm.list_models() for the names"
            )
        if tag and not timm.list_pretrained(name):
            tags = timm.list_pretrained(f"{base}.*")
            raise UnknownNameError(
                f"timm model '{base}' has no pretrained tag '{tag}'.{did_you_mean(name, tags)}"
                f" Tags: {', '.join(tags) or '(none)'}"
            )
        return name

    def build(self, name: str, num_classes: int | None) -> "nn.Module":
        import timm

        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return timm.create_model(name, pretrained=False, **kwargs)

    def preprocessing(self, name: str, model: "nn.Module") -> Preprocessing:
        from timm.data import resolve_data_config

        cfg = resolve_data_config(model=model)
        crop = int(cfg["input_size"][-1])
        # timm's eval transform resizes the shorter side to floor(crop / crop_pct), then centre-crops.
        resize = int(math.floor(crop / cfg.get("crop_pct", 0.875)))
        return Preprocessing(
            resize=resize, crop=crop,
            mean=tuple(255.0 * m for m in cfg["mean"]), std=tuple(255.0 * s for s in cfg["std"]),
            interpolation=_interpolation(cfg.get("interpolation", "bilinear")),
        )

    def class_names(self, name: str, model: "nn.Module") -> list[str]:
        from timm.data import infer_imagenet_subset

        subset = infer_imagenet_subset(model)
        if subset:
            names = imagenet_class_names(subset)
            if len(names) == num_outputs(model):
                return names
        return super().class_names(name, model)

    def candidates(self, name: str) -> list[str]:
        import difflib

        import timm

        return difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=6, cutoff=0.6)


class _TorchvisionFamily(Family):
    def _names(self) -> list[str]:
        import torchvision

        # Classification models only: detection/segmentation/video/quantized models live in submodules.
        return torchvision.models.list_models(module=torchvision.models)

    def check(self, name: str) -> str:
        names = self._names()
        if name not in names:
            raise UnknownNameError(
                f"unknown torchvision classification model '{name}'.{did_you_mean(name, names)}"
                " See torchvision.models.list_models(module=torchvision.models) for the names"
            )
        return name

    def weights(self, name: str) -> Any:
        import torchvision

        return torchvision.models.get_model_weights(name).DEFAULT

    def build(self, name: str, num_classes: int | None) -> "nn.Module":
        import torchvision

        kwargs = {} if num_classes is None else {"num_classes": num_classes}
        return torchvision.models.get_model(name, weights=None, **kwargs)

    def preprocessing(self, name: str, model: "nn.Module") -> Preprocessing:
        t = self.weights(name).transforms()
        return Preprocessing(
            resize=int(t.resize_size[0]), crop=int(t.crop_size[0]),
            mean=tuple(255.0 * m for m in t.mean), std=tuple(255.0 * s for s in t.std),
            interpolation=_interpolation(t.interpolation.value),
        )

    def class_names(self, name: str, model: "nn.Module") -> list[str]:
        names = list(self.weights(name).meta.get("categories") or [])
        return names if len(names) == num_outputs(model) else super().class_names(name, model)

    def candidates(self, name: str) -> list[str]:
        import difflib

        return difflib.get_close_matches(name, self._names(), n=6, cutoff=0.6)


class _TinyFamily(Family):
    needs_name = False

    def build(self, name: str, num_classes: int | None) -> "nn.Module":
        from .testing import TinyNet

        return TinyNet(num_classes=10 if num_classes is None else num_classes)

    def preprocessing(self, name: str, model: "nn.Module") -> Preprocessing:
        return Preprocessing(resize=16, crop=16, mean=(127.5,) * 3, std=(127.5,) * 3)


ARCHS.register("timm", _TimmFamily())
ARCHS.register("torchvision", _TorchvisionFamily())
ARCHS.register("tiny", _TinyFamily())


def parse_arch(arch: str) -> tuple[Family, str, str]:
    """``"timm:resnet18"`` -> (family, "resnet18", canonical id)."""
    if not isinstance(arch, str) or not arch.strip():
        raise ConfigError(f"arch must be a string like 'timm:resnet18', 'torchvision:resnet18' or 'tiny'; got {arch!r}")
    key, _, name = arch.strip().partition(":")
    family = ARCHS.get(key)
    if family.needs_name and not name:
        raise ConfigError(f"arch '{arch}' needs a model name: '{key}:<name>', e.g. '{key}:resnet18'")
    if not family.needs_name and name:
        raise ConfigError(f"arch '{key}' takes no name; use '{key}' instead of '{arch}'")
    name = family.check(name)
    return family, name, f"{key}:{name}" if name else key


def build_model(arch: str, num_classes: int) -> "nn.Module":
    """The architecture ``arch`` with random weights and a ``num_classes``-way head.

    Used to rebuild a model from an artifact's ``model.safetensors`` (``Manifest.arch`` + number of classes).

    Args:
        arch: ``timm:<name>``, ``torchvision:<name>`` or ``tiny``.
        num_classes: outputs of the head.

    Raises:
        UnknownNameError: unknown family or model name (with the closest match).
    """
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer; got {num_classes!r}")
    family, name, _ = parse_arch(arch)
    return family.build(name, num_classes)


def imagenet_class_names(subset: str = "imagenet-1k") -> list[str]:
    """Short, unique ImageNet class names from timm's offline label tables (index = class id).

    The short name is the first synonym of the WordNet description ("tiger cat", "espresso"); the two pairs
    of ImageNet-1k classes that share one ("crane", "maillot") get their WordNet id appended so that classes
    can be looked up by name.
    """
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subset)
    short = [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]
    counts = Counter(short)
    return [f"{s} ({info.index_to_label_name(i)})" if counts[s] > 1 else s for i, s in enumerate(short)]




# --------------------------------------------------------------------------------------------- pruned widths


SPEC_VERSION = 1


# -- recording and restoring the pruned widths --------------------------------------------------------------------


def _conv_types() -> tuple[type, ...]:
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _attrs(m: "nn.Module") -> dict[str, Any] | None:
    from torch import nn

    if isinstance(m, _conv_types()):
        return {"type": type(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels,
                "groups": m.groups}
    if isinstance(m, nn.Linear):
        return {"type": "Linear", "in_features": m.in_features, "out_features": m.out_features}
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return {"type": "BatchNorm", "num_features": m.num_features}
    if isinstance(m, nn.LayerNorm):
        return {"type": "LayerNorm", "normalized_shape": list(m.normalized_shape)}
    if isinstance(m, nn.GroupNorm):
        return {"type": "GroupNorm", "num_groups": m.num_groups, "num_channels": m.num_channels}
    return None


def structure_spec(model: "nn.Module", *, reference: "nn.Module | None" = None) -> dict[str, Any]:
    """The widths of every Conv / Linear / norm layer of ``model``, as JSON-ready data.

    Args:
        model: the (channel-pruned) model.
        reference: the unpruned architecture (e.g. ``build_model(arch, num_classes)``); when given, only modules
            whose widths differ from it are recorded, so an unpruned model gives an empty ``modules``.

    Returns:
        ``{"version": 1, "modules": {qualified name: {"type", widths...}}}``.
    """
    ref = dict(reference.named_modules()) if reference is not None else {}
    modules: dict[str, Any] = {}
    for name, m in model.named_modules():
        a = _attrs(m)
        if a is None:
            continue
        if reference is not None and name in ref and _attrs(ref[name]) == a:
            continue
        modules[name] = a
    return {"version": SPEC_VERSION, "modules": modules}


def _resize(m: "nn.Module", name: str, shape: tuple[int, ...], *, buffer: bool = False) -> None:
    import torch
    from torch import nn

    old = getattr(m, name, None)
    if old is None:
        return
    new = torch.empty(shape, dtype=old.dtype, device=old.device)
    if buffer:
        setattr(m, name, new.zero_() if name != "running_var" else new.fill_(1.0))
    else:
        setattr(m, name, nn.Parameter(new, requires_grad=old.requires_grad))


def restore_structure(model: "nn.Module", spec: dict[str, Any]) -> "nn.Module":
    """Give a freshly built ``model`` the widths recorded by :func:`structure_spec`, in place.

    Parameters and buffers of the changed layers get the recorded shapes (uninitialised: load the state dict
    next). An empty spec is a no-op.

    Returns:
        ``model``, for chaining.

    Raises:
        ArtifactError: the spec is malformed or names a module the model lacks or of another type.
    """
    from torch import nn

    if not isinstance(spec, dict) or spec.get("version") != SPEC_VERSION or not isinstance(spec.get("modules"), dict):
        raise ArtifactError(
            f"structure spec {str(spec)[:80]!r} is not a version-{SPEC_VERSION} spec from structure_spec();"
            " re-export the artifact with this edgeslim"
        )
    mods = dict(model.named_modules())
    for name, a in spec["modules"].items():
        m = mods.get(name)
        have = _attrs(m) if m is not None else None
        if have is None or have["type"] != a.get("type"):
            raise ArtifactError(
                f"structure spec names '{name}' ({a.get('type')}) but {type(model).__name__} has"
                f" {'no such module' if m is None else type(m).__name__}: the spec belongs to another architecture"
            )
        try:
            if isinstance(m, _conv_types()):
                m.in_channels, m.out_channels = int(a["in_channels"]), int(a["out_channels"])
                m.groups = int(a["groups"])
                k = tuple(m.kernel_size)
                if m.transposed:
                    _resize(m, "weight", (m.in_channels, m.out_channels // m.groups, *k))
                else:
                    _resize(m, "weight", (m.out_channels, m.in_channels // m.groups, *k))
                _resize(m, "bias", (m.out_channels,))
            elif isinstance(m, nn.Linear):
                m.in_features, m.out_features = int(a["in_features"]), int(a["out_features"])
                _resize(m, "weight", (m.out_features, m.in_features))
                _resize(m, "bias", (m.out_features,))
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.num_features = int(a["num_features"])
                for p in ("weight", "bias"):
                    _resize(m, p, (m.num_features,))
                for b in ("running_mean", "running_var"):
                    _resize(m, b, (m.num_features,), buffer=True)
            elif isinstance(m, nn.LayerNorm):
                m.normalized_shape = tuple(int(d) for d in a["normalized_shape"])
                for p in ("weight", "bias"):
                    _resize(m, p, m.normalized_shape)
            elif isinstance(m, nn.GroupNorm):
                m.num_groups, m.num_channels = int(a["num_groups"]), int(a["num_channels"])
                for p in ("weight", "bias"):
                    _resize(m, p, (m.num_channels,))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"structure spec entry '{name}' is malformed ({exc}): {a}") from None
    return model


def rebuild_model(arch: str, num_classes: int, structure: dict[str, Any] | None = None) -> "nn.Module":
    """``build_model(arch, num_classes)`` with the recorded widths put back (``structure`` None or empty: as built).

    The one call an exporter or runtime needs before ``load_state_dict`` of an artifact's ``model.safetensors``.
    """
    model = build_model(arch, num_classes)
    return restore_structure(model, structure) if structure else model




# --------------------------------------------------------------------------------------------- prefix / suffix


@contextmanager
def eval_mode(module: "nn.Module") -> "Iterator[nn.Module]":
    """``module`` and everything under it in eval mode for the block, then each submodule's own mode back.

    ``module.train(was)`` is not the same: a prefix or suffix of :func:`split_at` is a fresh chain (training, as
    every new module) around a model's own modules, and ``.train(True)`` on it would put a teacher's frozen
    BatchNorms into training mode.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, was in modes:
            m.training = was


def _chain_class() -> type:
    from torch import nn

    class Chain(nn.Module):
        """Modules run in order; a tensor with spatial axes is flattened before a head that starts with a Linear
        (the ``flatten(1)`` a classifier's ``forward`` does between pooling and the head). The modules are the
        model's own (shared parameters), so training a chain trains the model."""

        def __init__(self, names: list[str], mods: list["nn.Module"]) -> None:
            super().__init__()
            self.names = names
            self.mods = nn.ModuleList(mods)

        def forward(self, x):  # type: ignore[no-untyped-def]
            for m in self.mods:
                if x.dim() > 2 and _first_leaf_is_linear(m):
                    x = x.flatten(1)
                x = m(x)
            return x

    return Chain


def _first_leaf_is_linear(m: "nn.Module") -> bool:
    from torch import nn

    while isinstance(m, nn.Sequential) and len(m):
        m = m[0]
    return isinstance(m, nn.Linear)


def frozen_modules(model: "nn.Module", boundary: str) -> list[str]:
    """The modules ``train.freeze: boundary`` freezes: every module registered before ``boundary``'s subtree ends
    (pre-order, registration order; the same reading of the model as :func:`split_at`), ``""`` for the root.

    Raises:
        ConfigError: ``boundary`` names no module (did-you-mean).
    """
    names = [n for n, _ in model.named_modules() if n]
    if boundary not in names:
        raise ConfigError(f"train.freeze '{boundary}' is not a layer of {type(model).__name__}."
                          f"{did_you_mean(boundary, names)}")
    out: list[str] = []
    reached = False
    for n, _ in model.named_modules():
        if reached and not n.startswith(boundary + "."):
            break
        reached = reached or n == boundary
        out.append(n)
    return out


def split_at(model: "nn.Module", boundary: str, probe: Any) -> tuple["nn.Module", "nn.Module"]:
    """``(prefix, suffix)`` with ``suffix(prefix(x)) == model(x)``, cut after the layer named ``boundary``.

    The model is read as the chain of its top-level children in registration order; the child on ``boundary``'s
    path is expanded when it is an ``nn.Sequential`` (``blocks.4`` cuts timm's EfficientNet after stage 4). A
    timm head's functional dropout (``drop_rate``) is kept as an ``nn.Dropout`` before the classifier. Both parts
    share the model's modules. Torch's ``fx`` tracing would cover more graphs, but it does not trace timm's
    dynamic 'same' padding without timm-private leaf lists; the chain covers the families edgeslim builds
    (timm CNNs, torchvision's MobileNet/EfficientNet/ResNet-style ``features`` models, TinyNet) and is checked.

    Args:
        model: the network (its mode is left as it was).
        boundary: a qualified module name, e.g. ``blocks.4`` or ``features.6``.
        probe: one input batch; the split is verified on it in eval mode.

    Raises:
        ConfigError: ``boundary`` names no module (did-you-mean), is the last layer, or the model does not compute
            its children in order (then freezing works without a cache: ``train.cache: false``).
    """
    import torch
    from torch import nn

    names = [n for n, _ in model.named_modules() if n]
    if boundary not in names:
        raise ConfigError(
            f"train.freeze '{boundary}' is not a layer of {type(model).__name__}.{did_you_mean(boundary, names)}"
            f" Top-level layers: {', '.join(n for n, _ in model.named_children())}"
        )

    def leaves(parent: "nn.Module", prefix: str) -> list[tuple[str, "nn.Module"]]:
        out: list[tuple[str, nn.Module]] = []
        for n, m in parent.named_children():
            q = f"{prefix}{n}"
            if isinstance(m, nn.Sequential) and boundary.startswith(q + "."):
                out.extend(leaves(m, q + "."))
            else:
                out.append((q, m))
        return out

    chain = leaves(model, "")
    drop = float(getattr(model, "drop_rate", 0.0) or 0.0)
    try:
        head = find_head(model)[0]
    except SourceError:
        head = None
    if drop > 0 and head is not None and any(n == head for n, _ in chain):
        i = next(i for i, (n, _) in enumerate(chain) if n == head)
        chain.insert(i, ("(head dropout)", nn.Dropout(drop)))
    cut = next((i for i, (n, _) in enumerate(chain) if n == boundary), None)
    if cut is None:
        raise ConfigError(
            f"train.freeze '{boundary}' sits inside a layer that is not an nn.Sequential; freeze a whole stage:"
            f" one of {', '.join(n for n, _ in chain)}"
        )
    if cut == len(chain) - 1:
        raise ConfigError(f"train.freeze '{boundary}' is the last layer: nothing would be trained")
    chain_cls = _chain_class()
    prefix = chain_cls([n for n, _ in chain[: cut + 1]], [m for _, m in chain[: cut + 1]])
    suffix = chain_cls([n for n, _ in chain[cut + 1:]], [m for _, m in chain[cut + 1:]])
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            want = model(probe)
            got = suffix(prefix(probe))
    finally:
        model.train(was)
    scale = float(want.abs().max()) or 1.0
    if got.shape != want.shape or float((got - want).abs().max()) > 1e-4 * scale + 1e-5:
        raise ConfigError(
            f"{type(model).__name__} does not compute its layers in the order it registers them, so its output"
            f" after '{boundary}' cannot be cached; keep train.freeze and set train.cache: false (slower epochs)"
        )
    return prefix, suffix
