"""The search space: checked against params.yaml before any trial, sampled through Optuna, set by `-S`.

    check(hpo.space, raw)             # every key exists, every bound and choice passes the typed params
    values = suggest(trial, space)    # {"train.optimizer.lr": 0.004, "train.model": "cnn", ...}
    overrides(values)                 # ["train.optimizer.lr=0.004", "train.model=cnn", ...] for dvc exp run -S

A choice may be a list (a layer shape) or a dict (a whole section, set key by
key). Optuna's categorical distribution holds only plain values, so such a
choice is offered under its canonical JSON and decoded back; plain choices are
offered as they are, so the study and optuna-dashboard show them readably.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import ValidationError

from tasks.errors import InputError
from tasks.params import Dimension, Params

PLAIN = (str, int, float, bool, type(None))


def lookup(raw: dict, key: str) -> Any:
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def assign(raw: dict, key: str, value: Any) -> dict:
    """A copy of raw params with `key` set; a dict value sets its keys inside the section."""
    out = copy.deepcopy(raw)
    *parents, last = key.split(".")
    node = out
    for part in parents:
        node = node[part]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = {**node[last], **copy.deepcopy(value)}
    else:
        node[last] = copy.deepcopy(value)
    return out


def _probes(dim: Dimension) -> list[Any]:
    if dim.type == "categorical":
        return list(dim.choices)
    cast = int if dim.type == "int" else float
    return [cast(dim.low), cast(dim.high)]


def _problem(raw: dict, key: str, value: Any) -> str | None:
    try:
        Params.model_validate(assign(raw, key, value))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return f"hpo.space.{key}: the value {value!r} is refused by {where or 'params'}: {first['msg']}"
    return None


def check(space: dict[str, Dimension], raw: dict) -> None:
    """Refuse, naming the key, a space that params.yaml cannot take: unknown keys, values its types
    refuse (each bound and each choice is set alone into the params and checked), bad `when`s."""
    problems = []
    for key, dim in space.items():
        try:
            lookup(raw, key)
        except KeyError:
            problems.append(f"hpo.space.{key}: params.yaml has no such key (a typo? keys are dotted paths, "
                            f"e.g. train.optimizer.lr)")
            continue
        for cond_key, cond_value in dim.when.items():
            other = space.get(cond_key)
            if other is None or other.type != "categorical" or cond_value not in other.choices:
                problems.append(f"hpo.space.{key}.when: {cond_key}={cond_value!r} is not a choice of a "
                                f"categorical dimension of the space")
        base = raw
        for cond_key, cond_value in dim.when.items():
            if cond_key in space:
                base = assign(base, cond_key, cond_value)
        problems += [msg for value in _probes(dim) if (msg := _problem(base, key, value))]
    if problems:
        raise InputError("params.yaml hpo.space: " + str(len(problems)) + " problem(s), no trial started:\n"
                         + "\n".join(f"  - {p}" for p in problems))


def _label(choice: Any) -> Any:
    return choice if isinstance(choice, PLAIN) else json.dumps(choice, sort_keys=True)


def suggest(trial, space: dict[str, Dimension]) -> dict[str, Any]:
    """The trial's values, asked of Optuna in the space's order; a `when` not met skips its key."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        if any(values.get(k) != v for k, v in dim.when.items()):
            continue
        if dim.type == "float":
            values[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log, step=dim.step)
        elif dim.type == "int":
            step = int(dim.step) if dim.step else 1
            values[key] = trial.suggest_int(key, int(dim.low), int(dim.high), log=dim.log, step=step)
        else:
            labels = [_label(c) for c in dim.choices]
            picked = trial.suggest_categorical(key, labels)
            values[key] = dim.choices[labels.index(picked)]
    return values


def _leaves(key: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [leaf for k, v in value.items() for leaf in _leaves(f"{key}.{k}", v)]
    return [(key, value)]


def overrides(values: dict[str, Any]) -> list[str]:
    """`dvc exp run -S` arguments (Hydra's override grammar): a dict is set leaf by leaf, lists and
    strings as YAML flow values."""
    out = []
    for key, value in values.items():
        for leaf, v in _leaves(key, value):
            text = v if isinstance(v, str) else json.dumps(v)
            out.append(f"{leaf}={text}")
    return out


def applied(raw: dict, values: dict[str, Any]) -> dict:
    """Raw params with the trial's values set: what the trial's experiment should record."""
    for key, value in values.items():
        raw = assign(raw, key, value)
    return raw
