"""`{{.secret.NAME}}` and `{{.env.VAR}}` templates in system prompts, env var values and MCP
server configs (reference §10); and a user-defined workflow's step prompts, `{{inputs.NAME}}` and
`{{steps.ID.output}}` (`step_references`, `render_step`); and a job's prompt template,
`{{NAME}}` and `{{NAME.PATH}}` (at the end: `render_variables`).

Pure functions, shared by the API and the worker's activities. Rules:

- Whitespace inside the braces is allowed: `{{ .secret.NAME }}`.
- One pass: a substituted value is never scanned again, so a secret whose value happens to
  contain `{{.env.X}}` stays as it is.
- Other `{{...}}` forms (`{{var}}`, `{{.graph.node}}`) are left untouched for whoever owns them.
- An unknown name raises `TemplateError`, which names every missing variable (never a value):
  a prompt or config silently missing a credential is worse than a clear failure. Callers that
  prefer to go on catch it, or ask `missing()` first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PATTERN = re.compile(r"\{\{\s*\.(secret|env)\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateError(ValueError):
    """Templates name variables that are not available; `missing` holds `secret.X` / `env.X`."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__("unknown template variable(s): " + ", ".join(missing))


def variables(text: str) -> list[tuple[str, str]]:
    """`(kind, name)` pairs the text refers to, in order, each once; kind is secret or env."""
    return list(dict.fromkeys((m.group(1), m.group(2)) for m in PATTERN.finditer(text)))


def missing(text: str, env: Mapping[str, str], secrets: Mapping[str, str]) -> list[str]:
    """The variables `text` refers to that `env`/`secrets` do not hold, as `secret.X`/`env.X`."""
    return [
        f"{kind}.{name}"
        for kind, name in variables(text)
        if name not in (secrets if kind == "secret" else env)
    ]


def render(text: str, env: Mapping[str, str], secrets: Mapping[str, str]) -> str:
    """`text` with every `{{.secret.NAME}}` and `{{.env.VAR}}` replaced by its value."""
    absent = missing(text, env, secrets)
    if absent:
        raise TemplateError(absent)

    def value(match: re.Match[str]) -> str:
        source = secrets if match.group(1) == "secret" else env
        return str(source[match.group(2)])

    return PATTERN.sub(value, text)


def render_config(value: Any, env: Mapping[str, str], secrets: Mapping[str, str]) -> Any:
    """`value` with every string inside it rendered, through dicts (values, not keys), lists
    and tuples; other values are returned as they are. The input is not modified."""
    if isinstance(value, str):
        return render(value, env, secrets)
    if isinstance(value, Mapping):
        absent: list[str] = []
        out: dict[Any, Any] = {}
        for key, item in value.items():
            try:
                out[key] = render_config(item, env, secrets)
            except TemplateError as error:
                absent.extend(name for name in error.missing if name not in absent)
        if absent:
            raise TemplateError(absent)
        return out
    if isinstance(value, list | tuple):
        absent = []
        items = []
        for item in value:
            try:
                items.append(render_config(item, env, secrets))
            except TemplateError as error:
                absent.extend(name for name in error.missing if name not in absent)
        if absent:
            raise TemplateError(absent)
        return items if isinstance(value, list) else tuple(items)
    return value


# --- a workflow's step prompts ------------------------------------------------------------------
#
# `{{inputs.NAME}}` is the run's input NAME (a string as it is, anything else as JSON) and
# `{{steps.ID.output}}` the output of step ID, which the step must depend on. Any other
# `{{inputs...}}` or `{{steps...}}` form is malformed; other `{{...}}` forms are left as text.

STEP_TEMPLATE = re.compile(r"\{\{\s*((?:inputs|steps)\b[^{}]*?)\s*\}\}")
_INPUT = re.compile(r"inputs\.([A-Za-z_][A-Za-z0-9_]*)")
_STEP_OUTPUT = re.compile(r"steps\.([A-Za-z0-9_-]+)\.output")


@dataclass(frozen=True)
class StepReferences:
    inputs: list[str]
    steps: list[str]
    malformed: list[str]


def step_references(text: str) -> StepReferences:
    """The inputs and steps a step prompt names, each once in order, and its malformed forms."""
    inputs: list[str] = []
    steps: list[str] = []
    malformed: list[str] = []
    for match in STEP_TEMPLATE.finditer(text):
        expression = match.group(1)
        if found := _INPUT.fullmatch(expression):
            inputs.append(found.group(1))
        elif found := _STEP_OUTPUT.fullmatch(expression):
            steps.append(found.group(1))
        else:
            malformed.append(match.group(0))
    return StepReferences(_unique(inputs), _unique(steps), _unique(malformed))


def render_step(text: str, inputs: Mapping[str, Any], outputs: Mapping[str, str | None]) -> str:
    """`text` with its inputs and step outputs in place (one pass; a name that is not there
    becomes empty: the definition was checked when written and when started)."""

    def value(match: re.Match[str]) -> str:
        expression = match.group(1)
        if found := _INPUT.fullmatch(expression):
            return _as_text(inputs.get(found.group(1), ""))
        if found := _STEP_OUTPUT.fullmatch(expression):
            return outputs.get(found.group(1)) or ""
        return match.group(0)

    return STEP_TEMPLATE.sub(value, text)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _as_text(value: Any) -> str:
    """A value as a template shows it: a string as it is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


# --- a job's prompt template --------------------------------------------------------------------
#
# `{{NAME}}` is the trigger's parameter NAME, `{{NAME.PATH}}` a value inside it (dict keys, list
# indexes), e.g. `{{payload.pull_request.title}}` for a webhook's JSON body. One pass, like the
# others; a name the values do not hold is left as written (a cron run has no parameters, and
# its template must not fail for it). `{{.secret.X}}` and `{{.env.X}}` (a leading dot) are not
# this form: the worker renders them.

VARIABLE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*)\s*\}\}")
_ABSENT = object()


def lookup(values: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path, or `_ABSENT`."""
    current: Any = values
    for part in path.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _ABSENT
    return current


def render_variables(text: str, values: Mapping[str, Any]) -> str:
    """`text` with every `{{NAME}}` / `{{NAME.PATH}}` that `values` holds in place."""

    def value(match: re.Match[str]) -> str:
        found = lookup(values, match.group(1))
        return match.group(0) if found is _ABSENT else _as_text(found)

    return VARIABLE.sub(value, text)
