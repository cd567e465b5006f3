"""Named components: the factories a config can choose by name, and their options.

Every group the config chooses from (task, model, algo, optimizer, logger) is a
`Registry` of factories. A factory registers itself where it is defined:

    @ALGORITHMS.register("maml")
    def make_maml(model, task, inner_lr, inner_steps, *, first_order: bool = False):
        '''...
        Args:
            first_order: drop second derivatives (FOMAML).
        '''

Its keyword-only parameters are its *options*: their annotations, defaults and
docstring lines are the one home of the option's type, default and help text. The
config schema (typed, so a misspelt key or a wrong type is refused) and the config
reference are derived from them. A factory checks its own option values with
`check_option`, which raises `OptionError` naming the option.
"""

import inspect
import re
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

Factory = TypeVar("Factory", bound=Callable[..., Any])


class OptionError(ValueError):
    """An option value a factory does not accept; the message names the option."""

    def __init__(self, option: str, value: Any, allowed: str):
        self.option, self.value, self.allowed = option, value, allowed
        super().__init__(f"{option}={value} is not allowed: {allowed}")


def check_option(condition: bool, option: str, value: Any, allowed: str) -> None:
    """Raises `OptionError(option, value, allowed)` unless `condition` holds."""
    if not condition:
        raise OptionError(option, value, allowed)


class Option(NamedTuple):
    """One option of a factory, read off its signature and docstring."""

    name: str
    annotation: Any  # the parameter's type, e.g. float, tuple[int, ...], str | None
    default: Any
    help: str
    choices: tuple[str, ...] | None  # the values of a Literal annotation


class Registry:
    """Factories of one config group, by name."""

    def __init__(self, group: str):
        self.group = group
        self._factories: dict[str, Callable[..., Any]] = {}
        self._metadata: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **metadata: Any) -> Callable[[Factory], Factory]:
        """Decorator registering a factory as option `name` of this group, with
        facts the config needs before building it (e.g. a task's headline metric).
        """

        def add(factory: Factory) -> Factory:
            if name in self._factories:
                raise ValueError(f"{self.group} {name!r} is registered twice")
            self._factories[name] = factory
            self._metadata[name] = metadata
            return factory

        return add

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name not in self._factories:
            raise KeyError(
                f"{self.group}={name} is not registered; known: {', '.join(self)}"
            )
        return self._factories[name]

    def metadata(self, name: str) -> dict[str, Any]:
        self[name]  # noqa: B018 - the clear KeyError for an unknown name
        return self._metadata[name]

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._factories))

    def create(self, name: str, *args: Any, **options: Any) -> Any:
        """Calls factory `name` with `args` and `options`, after checking the values
        of options annotated with a `Literal` against their choices."""
        self.check_choices(name, **options)
        return self[name](*args, **options)

    def check_choices(self, name: str, **options: Any) -> None:
        """Raises `OptionError` for an option whose value is not among the choices
        of its `Literal` annotation (before anything is built)."""
        for option in self.options(name):
            value = options.get(option.name, option.default)
            choices = option.choices
            if choices is not None and value is not None and value not in choices:
                allowed = f"choose one of {', '.join(map(str, choices))}"
                raise OptionError(option.name, value, allowed)

    def options(self, name: str) -> list[Option]:
        """The factory's options: its keyword-only parameters, in order."""
        factory = self[name]
        helps = _arg_helps(inspect.getdoc(factory) or "")
        hints = typing.get_type_hints(factory)
        options = []
        for param in inspect.signature(factory).parameters.values():
            if param.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            if param.default is inspect.Parameter.empty:
                raise TypeError(
                    f"{self.group}={name}: option {param.name} has no default"
                )
            annotation = hints[param.name]
            options.append(
                Option(
                    param.name,
                    annotation,
                    param.default,
                    helps.get(param.name, ""),
                    _choices(annotation),
                )
            )
        return options


def _choices(annotation: Any) -> tuple[str, ...] | None:
    """The values of a `Literal` annotation (also inside `Literal[...] | None`)."""
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for arg in typing.get_args(annotation) if _is_union(annotation) else ():
        if typing.get_origin(arg) is typing.Literal:
            return typing.get_args(arg)
    return None


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or (
        typing.get_origin(annotation) is typing.Union
    )


def plain_type(annotation: Any) -> Any:
    """The annotation as a config schema can type it: a `Literal` of strings becomes
    `str` (`Registry.create` checks its values), `X | None` stays optional."""
    if _is_union(annotation):
        inner = [
            plain_type(a) for a in typing.get_args(annotation) if a is not type(None)
        ]
        return inner[0] | None if len(inner) == 1 else Any
    if _choices(annotation) is not None:
        return str
    return annotation


_ARG_LINE = re.compile(r"^    (\w+)(?: \([^)]*\))?: (.*)$")


def _arg_helps(docstring: str) -> dict[str, str]:
    """`name -> help` from a Google-style docstring's `Args:` section."""
    helps: dict[str, str] = {}
    in_args, current = False, None
    for line in docstring.splitlines():
        if line.strip() in ("Args:", "Options:"):
            in_args = True
            continue
        if in_args and line and not line.startswith(" "):
            break  # the next section
        if in_args and (match := _ARG_LINE.match(line)):
            current = match.group(1)
            helps[current] = match.group(2).strip()
        elif in_args and current and line.startswith("        "):
            helps[current] += " " + line.strip()
    return helps
