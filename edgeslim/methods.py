"""One pydantic config per method, discriminated by ``method``, registered beside its handler.

The generic machinery behind every "pick one of several methods" section of a recipe (pruning; quantization can
use the same). A stage that has methods does three things:

1. Declare a registry, naming the package that registers the built-in methods (imported on the first lookup, so
   a recipe can be parsed without the stage being imported first)::

       PRUNE_METHODS = MethodRegistry("pruning method", plugins="edgeslim.compress.prune")

2. Write each method as one config class and one handler, registered together (aliases are declared here and
   nowhere else)::

       class OneShot(MethodConfig):
           method: Literal["one_shot"] = "one_shot"
           sparsity: float = Field(default=0.5, ge=0, lt=1)

       @PRUNE_METHODS.register(OneShot, aliases=("oneshot",))
       def one_shot(cfg: OneShot, ctx: PruneContext) -> PruneResult: ...

3. Turn data into a config with :meth:`MethodRegistry.parse` (``{"method": "oneshot", "sparsity": 0.8}`` ->
   ``OneShot(sparsity=0.8)``; an unknown method gets did-you-mean, a key the method does not have is named with
   the keys it does have) and run it with ``PRUNE_METHODS.handler(cfg)(cfg, ctx)``.

A third-party method registers the same way from its own module; once that module is imported the recipe accepts
its name. :meth:`MethodRegistry.union` gives the pydantic discriminated union of the registered configs (for a
JSON schema or a typed field of a fixed set of methods). See ``docs/adding-a-pruning-method.md``.

This module is light (pydantic only): the handler modules must keep heavy imports (torch) inside functions, so
parsing a recipe stays light.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Generic, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, model_serializer

from .errors import ConfigError, UnknownNameError
from .registry import Registry, did_you_mean

C = TypeVar("C", bound="MethodConfig")
H = TypeVar("H", bound=Callable[..., Any])


class MethodConfig(BaseModel):
    """Base of every method's config: unknown keys are errors, assignments are validated.

    A subclass narrows ``method`` to ``Literal["<its name>"]`` with that name as the default: the literal is the
    discriminator and the name the method is registered under.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    #: a pruning method whose only training is its final round (``train.final_epochs``, default ``train.epochs``):
    #: recipe checks say so when ``final_epochs`` is 0 while ``epochs`` is not
    trains_once: ClassVar[bool] = False

    method: str

    @model_serializer(mode="wrap")
    def _method_first(self, handler: SerializerFunctionWrapHandler) -> Any:
        # ``method``, then the method's own keys, then the ones shared with other methods (a readable YAML)
        data = handler(self)
        if not isinstance(data, dict):
            return data
        order = ["method"]
        for klass in type(self).__mro__:
            order += [k for k in getattr(klass, "__annotations__", {}) if k in data and k not in order]
        return {k: data[k] for k in order + [k for k in data if k not in order]}

    @classmethod
    def method_name(cls) -> str:
        """The ``method`` literal of this config class."""
        ann = cls.model_fields["method"].annotation
        if get_origin(ann) is Literal and len(get_args(ann)) == 1:
            return str(get_args(ann)[0])
        raise ConfigError(
            f"{cls.__name__}.method must be declared as Literal['<name>'] = '<name>' to register the method"
        )

    @classmethod
    def option_names(cls) -> list[str]:
        """The keys this method takes besides ``method``: its own first, then those shared with other methods."""
        order: list[str] = []
        for klass in cls.__mro__:
            order += [k for k in getattr(klass, "__annotations__", {}) if k in cls.model_fields and k not in order]
        return [k for k in order if k != "method"] + [k for k in cls.model_fields if k not in order]


@dataclass(frozen=True)
class Method(Generic[C]):
    """A registered method: its config class and its handler."""

    name: str
    config: type[C]
    handler: Callable[..., Any]


class MethodRegistry:
    """Maps a method name (or alias) to its config class and handler; built on :class:`~edgeslim.registry.Registry`.

    Args:
        kind: what the methods are, for error messages (``"pruning method"``).
        plugins: a module imported on the first lookup, which registers the built-in methods.
        base: the config class every registered config must subclass.
        where: the recipe section the configs live in, for error messages (``"prune"``).
    """

    def __init__(self, kind: str, *, plugins: str | None = None, base: type[MethodConfig] = MethodConfig,
                 where: str = "") -> None:
        self.kind = kind
        self.base = base
        self.where = where
        self._plugins = plugins
        self._registry: Registry[Method[Any]] = Registry(kind)
        self._upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def set_hooks(self, *, base: type[MethodConfig] | None = None,
                  upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        """Hooks of the plugin module that owns the configs, so that parsing a section needs only this registry
        (the recipe imports no stage): ``base``, the config class every method subclasses; ``upgrade``, applied to
        a section's data before it is parsed (an older form of the section, e.g. a version-1 flat one)."""
        if base is not None:
            self.base = base
        if upgrade is not None:
            self._upgrade = upgrade

    # -- registration ---------------------------------------------------------------------------------------------
    def register(self, config: type[C], *, aliases: tuple[str, ...] = ()) -> Callable[[H], H]:
        """Decorator: register ``handler`` for ``config`` under ``config``'s ``method`` literal and ``aliases``.

        Raises:
            ConfigError: the config does not subclass the registry's base, or the name is taken.
        """
        if not (isinstance(config, type) and issubclass(config, self.base)):
            raise ConfigError(f"{config!r} is not a {self.base.__name__} subclass; a {self.kind} needs one")
        name = config.method_name()

        def add(handler: H) -> H:
            self._registry.register(name, Method(name, config, handler), aliases=aliases)
            return handler

        return add

    def unregister(self, name: str) -> Method[Any]:
        """Remove a method (and its aliases); for tests that register a temporary one."""
        self._load()
        return self._registry.unregister(name)

    def _load(self) -> None:
        if self._plugins is not None:
            plugins, self._plugins = self._plugins, None
            importlib.import_module(plugins)

    # -- lookup ---------------------------------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """The registered name of ``name`` (or an alias); :class:`~edgeslim.errors.UnknownNameError` otherwise."""
        self._load()
        return self._registry.canonical(name)

    def get(self, name: str) -> Method[Any]:
        """The :class:`Method` registered as ``name`` (or an alias)."""
        self._load()
        return self._registry.get(name)

    def config_class(self, name: str) -> type[MethodConfig]:
        """The config class of method ``name``."""
        return self.get(name).config

    def handler(self, name_or_config: str | MethodConfig) -> Callable[..., Any]:
        """The handler of a method, by name or by one of its configs."""
        name = name_or_config.method if isinstance(name_or_config, MethodConfig) else name_or_config
        return self.get(name).handler

    def names(self) -> list[str]:
        """The registered method names (aliases excluded)."""
        self._load()
        return self._registry.names()

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._registry

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def union(self) -> Any:
        """``Annotated[Union[<every registered config>], Field(discriminator="method")]`` (for a schema or a field)."""
        from typing import Annotated

        configs = tuple(self.get(n).config for n in self.names())
        if len(configs) == 1:
            return configs[0]
        return Annotated[Union[configs], Field(discriminator="method")]  # type: ignore[valid-type]

    # -- parsing --------------------------------------------------------------------------------------------------
    def parse(self, data: MethodConfig | dict[str, Any] | None, *, default: str | None = None) -> MethodConfig:
        """Validate ``data`` as the config of the method it names (``default`` when it names none).

        An alias is resolved to the method's name. A config instance is returned as it is.

        Raises:
            UnknownNameError: the method is not registered (lists the known ones and the closest match).
            ConfigError: a key the method does not have (lists its keys), or a value out of range.
        """
        self._load()  # the plugins register the methods and the hooks
        if isinstance(data, MethodConfig):
            if not isinstance(data, self.base):
                raise ConfigError(f"{type(data).__name__} is not a {self.kind} config")
            return data
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{self._at('')}expected a mapping with a 'method' key, got {type(data).__name__}")
        if self._upgrade is not None:
            data = self._upgrade(data)
        name = data.get("method", default)
        if name is None:
            raise ConfigError(f"{self._at('')}missing 'method'; one of: {', '.join(self.names())}")
        if not isinstance(name, str):
            raise ConfigError(f"{self._at('method')}expected a method name, got {name!r}")
        try:
            method = self.get(name)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{self._at('method')}{exc}") from None
        try:
            return method.config.model_validate({**data, "method": method.name})
        except ValidationError as exc:
            raise ConfigError("; ".join(self.error_lines(exc, method.config))) from None

    def error_lines(self, exc: ValidationError, config: type[MethodConfig]) -> list[str]:
        """One readable line per error of validating ``config`` (used by :meth:`parse` and the recipe loader)."""
        lines = []
        keys = config.option_names()
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                key = str(err["loc"][-1])
                elsewhere = [n for n in self._registry.names() if key in self._registry.get(n).config.model_fields]
                hint = f" ({key} belongs to method {', '.join(repr(n) for n in elsewhere)})" if elsewhere else ""
                lines.append(
                    f"unknown key '{self._dotted(loc)}' for method '{config.method_name()}'."
                    f"{did_you_mean(key, ['method', *keys])}"
                    f" Valid keys here: {', '.join(['method', *keys])}{hint}"
                )
            else:
                lines.append(f"{self._dotted(loc)}: {err['msg']}")
        return lines

    def _dotted(self, loc: str) -> str:
        if not loc:
            return self.where or "(top level)"
        return f"{self.where}.{loc}" if self.where else loc

    def _at(self, loc: str) -> str:
        where = self._dotted(loc) if loc else self.where
        return f"{where}: " if where else ""

    def __repr__(self) -> str:
        return f"MethodRegistry({self.kind!r}, {self.names()})"


# The pruning methods: configs and handlers live in edgeslim.compress.prune (one module per method), which registers
# them on the first lookup; the recipe parses its ``prune`` section through this registry.
PRUNE_METHODS = MethodRegistry("pruning method", plugins="edgeslim.compress.prune", where="prune")

# The quantization methods (INT8): configs and handlers live in the INT8 package, edgeslim.quant; the recipe parses its
# ``quantize`` section through this registry.
QUANT_METHODS = MethodRegistry("quantization method", plugins="edgeslim.quant", where="quantize")
