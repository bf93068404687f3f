"""The tools around the compiler: `layerc run` (inference from the shell), `layerc summary` (a
table of layers, parameters and FLOPs), `layerc graph` (a diagram of the layers) and `layerc fmt`
(canonical formatting). Each takes a checked `ir.Program` or .lyr text and gives back data or
text; the CLI prints it. This module holds what they share: choosing the model a command is for."""

from __future__ import annotations

import difflib

from .. import ir
from ..errors import UsageError


def top_level_models(program: ir.Program) -> list[ir.Model]:
    """The models no other model uses as a layer, in source order."""
    used = {
        layer.model.name
        for model in program.models
        for layer in model.layers
        if isinstance(layer, ir.Submodel)
    }
    return [model for model in program.models if model.name not in used]


def pick_model(program: ir.Program, name: str | None, file: str) -> ir.Model:
    """The model `--model NAME` asks for; without a name, the file's one top-level model (the
    one no other model uses). Several top-level models without `--model` is a usage error that
    lists them; an unknown name is one that suggests the closest."""
    by_name = {model.name: model for model in program.models}
    if name is not None:
        if name in by_name:
            return by_name[name]
        by_lower = {model.lower(): model for model in by_name}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
        hint = f"; did you mean {by_lower[close[0]]!r}?" if close else ""
        raise UsageError(f"{file} has no model {name!r}{hint} (models: {', '.join(by_name)})")
    candidates = top_level_models(program)
    if len(candidates) == 1:
        return candidates[0]
    names = ", ".join(model.name for model in candidates)
    raise UsageError(
        f"{file} defines several models that no other model uses ({names}): "
        "choose one with --model NAME"
    )
