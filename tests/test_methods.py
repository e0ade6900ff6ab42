"""MethodRegistry: one config class per method, discriminated by ``method``, registered beside its handler."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field, TypeAdapter

from edgeslim.errors import ConfigError, UnknownNameError
from edgeslim.methods import MethodConfig, MethodRegistry


class Fast(MethodConfig):
    method: Literal["fast"] = "fast"
    speed: int = Field(default=1, ge=1)


class Slow(MethodConfig):
    method: Literal["slow"] = "slow"
    delay: float = 0.5


def _registry() -> MethodRegistry:
    reg = MethodRegistry("test method", where="section")

    @reg.register(Fast, aliases=("quick",))
    def fast(cfg: Fast, ctx: object) -> str:
        return f"fast {cfg.speed} {ctx}"

    @reg.register(Slow)
    def slow(cfg: Slow, ctx: object) -> str:
        return f"slow {cfg.delay}"

    return reg


def test_parse_picks_the_config_by_method_and_resolves_aliases():
    reg = _registry()
    cfg = reg.parse({"method": "quick", "speed": 3})
    assert cfg == Fast(speed=3) and reg.handler(cfg)(cfg, "ctx") == "fast 3 ctx"
    assert reg.parse(None, default="slow") == Slow() and reg.parse(Slow(delay=1.0)) == Slow(delay=1.0)
    assert reg.names() == ["fast", "slow"] and "quick" in reg and len(reg) == 2
    # the method's own keys first when serialised
    assert list(Fast(speed=2).model_dump()) == ["method", "speed"]


def test_errors_name_the_fix():
    reg = _registry()
    with pytest.raises(UnknownNameError, match=r"section.method: unknown test method 'fats'. Did you mean 'fast'\?"):
        reg.parse({"method": "fats"})
    with pytest.raises(ConfigError, match=r"unknown key 'section.delay' for method 'fast'.*\(delay belongs to method"
                                          r" 'slow'\)"):
        reg.parse({"method": "fast", "delay": 1})
    with pytest.raises(ConfigError, match="section.speed: Input should be greater than or equal to 1"):
        reg.parse({"method": "fast", "speed": 0})
    with pytest.raises(ConfigError, match="missing 'method'; one of: fast, slow"):
        reg.parse({})
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register(Fast)(lambda cfg, ctx: None)

    class NoLiteral(MethodConfig):
        method: str = "x"

    with pytest.raises(ConfigError, match=r"must be declared as Literal\['<name>'\]"):
        reg.register(NoLiteral)


def test_union_is_the_discriminated_type_of_the_registered_configs():
    reg = _registry()
    adapter = TypeAdapter(list[reg.union()])
    assert adapter.validate_python([{"method": "slow", "delay": 2}, {"method": "fast"}]) == [Slow(delay=2), Fast()]
    schema = adapter.json_schema()
    assert schema["items"]["discriminator"]["propertyName"] == "method"


def test_plugins_register_on_first_lookup_and_can_be_removed():
    from edgeslim.methods import PRUNE_METHODS

    assert "one_shot" in PRUNE_METHODS  # imports edgeslim.compress.prune, which registers the built-in methods
    reg = _registry()
    assert reg.unregister("quick").name == "fast"
    assert reg.names() == ["slow"] and "quick" not in reg
