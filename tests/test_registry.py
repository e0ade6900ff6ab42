import pytest

from edgeslim.errors import ConfigError, EdgeslimError, UnknownNameError
from edgeslim.registry import Registry


def test_register_get_and_alias():
    reg = Registry("widget")

    @reg.register("alpha", aliases=("a",))
    def alpha():
        return 1

    assert reg.get("alpha") is alpha
    assert reg.get("a") is alpha
    assert reg.canonical("a") == "alpha"
    assert "a" in reg and "alpha" in reg and "beta" not in reg
    assert reg.names() == ["alpha"]


def test_unknown_name_lists_known_and_closest():
    reg = Registry("runtime backend")
    for name in ("onnxruntime", "openvino", "torch"):
        reg.register(name, object())
    with pytest.raises(UnknownNameError) as exc:
        reg.get("openvno")
    msg = str(exc.value)
    assert "unknown runtime backend 'openvno'" in msg
    assert "Did you mean 'openvino'?" in msg
    assert "onnxruntime, openvino, torch" in msg
    # one error root, and the natural builtin
    assert isinstance(exc.value, EdgeslimError) and isinstance(exc.value, ValueError)


def test_register_twice_is_an_error():
    reg = Registry("exporter")
    reg.register("onnx", 1)
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("onnx", 2)
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("other", 3, aliases=("onnx",))
    assert reg.get("onnx") == 1


def test_plugins_are_imported_on_the_first_lookup_and_not_on_register(tmp_path, monkeypatch):
    # a registry declared below the stages that fill it names their modules; registering imports nothing
    import sys
    import types

    holder = types.ModuleType("edgeslim_test_widget_holder")
    monkeypatch.setitem(sys.modules, holder.__name__, holder)
    (tmp_path / "edgeslim_test_widget_plugin.py").write_text(
        "import edgeslim_test_widget_holder as h\nh.REG.register('beta', 2)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg: Registry[int] = Registry("widget", plugins=("edgeslim_test_widget_plugin",))
    holder.REG = reg  # type: ignore[attr-defined]
    try:
        reg.register("alpha", 1)
        assert "edgeslim_test_widget_plugin" not in sys.modules
        assert reg.names() == ["alpha", "beta"] and reg.get("beta") == 2
        assert "edgeslim_test_widget_plugin" in sys.modules
    finally:
        sys.modules.pop("edgeslim_test_widget_plugin", None)
