"""How the helps read: flags without a type, values named by what they are (PATH, TEXT, N), arguments in the usage
line as the text names them (AUDIO, NAME CLIP)."""

from pathlib import Path
from typing import get_args, get_origin

from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

METAVARS = {int: "N", float: "NUMBER", str: "TEXT", Path: "PATH"}


def _metavar(param) -> str | None:
    """The name of a parameter's value in the helps; None keeps typer's (the choices of an enum)."""
    if isinstance(param, TyperArgument):
        return param.name.upper() if param.name else None
    if not isinstance(param, TyperOption):
        return None
    if param.is_flag:
        return ""  # a flag takes no value
    if param.type_descriptor.is_choice and param.type_descriptor.choices:  # named; the help lists the choices
        choices = [getattr(c, "value", c) for c in param.type_descriptor.choices]
        param.help = f"{param.help or ''} One of: {', '.join(map(str, choices))}.".strip()
        long = [o for o in param.opts if o.startswith("--")]
        return (long[0][2:] if long else param.name or "value").upper().replace("-", "_")
    annotation: object = param.type_descriptor.annotation
    if get_origin(annotation) is list:  # a repeatable option: the element's name
        (annotation,) = get_args(annotation)
    return METAVARS.get(annotation)  # type: ignore[call-overload]


def _name_values(params) -> None:
    for param in params:
        if param.metavar is None:
            param.metavar = _metavar(param)


class _Named:
    """Helps that name their values (METAVARS) and show flags, --help included, bare."""

    params: list

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _name_values(self.params)

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None:
            option.metavar = ""
        return option


class Command(_Named, TyperCommand):
    """A typer command with _Named's helps, its arguments in the usage line as the text names them."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or (param.name or "").upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


class Group(_Named, TyperGroup):
    """A typer group (the app, `voices`) whose own options read as Command's do."""
