"""Naming schemes as data: each scheme is a table of rules between canonical and foreign names.

Canonical names are facebookresearch/mae's. A rule pairs a canonical pattern with one foreign
pattern (or several, when the foreign scheme splits the tensor) and a named, invertible
transform. The same table runs both ways: `plan_to_canonical` reads a foreign checkpoint,
`plan_from_canonical` writes one. A plan is the full list of steps, built and checked before
any tensor is touched, and is what `--dry-run` prints.

Placeholders in patterns: `{n}` a layer index; the others name a fixed set of module names.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

PLACEHOLDERS = {
    "n": r"\d+",
    "blocks": r"blocks|decoder_blocks",
    "ln": r"norm1|norm2",
    "norm": r"norm|decoder_norm|fc_norm",
}


class MappingError(ValueError):
    """Names that no rule of a scheme accounts for, or that collide."""


@dataclass(frozen=True)
class Transform:
    """An invertible operation between one canonical tensor and its foreign part(s)."""

    name: str
    to_foreign: Callable[[np.ndarray, int], tuple[np.ndarray, ...]]
    to_canonical: Callable[[Sequence[np.ndarray]], np.ndarray]


RENAME = Transform("rename", lambda a, parts: (a,), lambda parts: parts[0])
TRANSPOSE = Transform("transpose", lambda a, parts: (a.T,), lambda parts: parts[0].T)
# e.g. a fused qkv weight (3D, D) <-> query, key, value (D, D) each.
SPLIT = Transform("split", lambda a, parts: tuple(np.split(a, parts, axis=0)),
                  lambda parts: np.concatenate(parts, axis=0))


@dataclass(frozen=True)
class Rule:
    canonical: str
    foreign: tuple[str, ...]
    transform: Transform = RENAME

    def __post_init__(self):
        if isinstance(self.foreign, str):
            object.__setattr__(self, "foreign", (self.foreign,))


def _compile(pattern: str) -> re.Pattern:
    regex = re.escape(pattern)
    for key, alternatives in PLACEHOLDERS.items():
        regex = regex.replace(re.escape("{" + key + "}"), f"(?P<{key}>{alternatives})")
    return re.compile(regex + r"\Z")


@dataclass(frozen=True)
class Step:
    """One line of a plan: foreign name(s) <-> canonical name, through a transform."""

    canonical: str
    foreign: tuple[str, ...]
    transform: Transform = RENAME


@dataclass(frozen=True)
class Scheme:
    name: str
    description: str
    rules: tuple[Rule, ...]
    # Names no rule matches are the same in this scheme as in the canonical one.
    passthrough: bool = False
    _compiled: list = field(default=None, init=False, repr=False, compare=False)

    def _patterns(self):
        if self._compiled is None:
            compiled = [(rule, _compile(rule.canonical), [_compile(f) for f in rule.foreign]) for rule in self.rules]
            object.__setattr__(self, "_compiled", compiled)
        return self._compiled

    def plan_from_canonical(self, names: Iterable[str]) -> list[Step]:
        steps, unmapped = [], []
        for name in names:
            for rule, canonical, _ in self._patterns():
                match = canonical.match(name)
                if match:
                    steps.append(Step(name, tuple(f.format(**match.groupdict()) for f in rule.foreign),
                                      rule.transform))
                    break
            else:
                (steps.append(Step(name, (name,))) if self.passthrough else unmapped.append(name))
        _raise_unmapped(unmapped, f"canonical names with no {self.name} counterpart")
        _raise_collisions(steps, lambda step: step.foreign, self.name)
        return steps

    def plan_to_canonical(self, names: Iterable[str]) -> list[Step]:
        groups: dict[str, tuple[Rule, dict[int, str]]] = {}
        unmapped = []
        for name in names:
            found = self._match_foreign(name) or ((None, name, 0) if self.passthrough else None)
            if found is None:
                unmapped.append(name)
                continue
            rule, canonical, part = found
            slot = groups.setdefault(canonical, (rule, {}))[1]
            if part in slot:
                raise MappingError(f"{slot[part]!r} and {name!r} both map to {canonical!r}")
            slot[part] = name
        _raise_unmapped(unmapped, f"names that are not {self.name} names")
        steps, incomplete = [], []
        for canonical, (rule, parts) in groups.items():
            count = len(rule.foreign) if rule else 1
            if len(parts) != count:
                incomplete.append(f"{canonical} (has {sorted(parts.values())})")
                continue
            steps.append(Step(canonical, tuple(parts[i] for i in range(count)), rule.transform if rule else RENAME))
        _raise_unmapped(incomplete, "tensors with some of their parts missing")
        return steps

    def _match_foreign(self, name: str):
        for rule, _, foreign_patterns in self._patterns():
            for part, pattern in enumerate(foreign_patterns):
                match = pattern.match(name)
                if match:
                    return rule, rule.canonical.format(**match.groupdict()), part
        return None


def _raise_unmapped(names: list[str], what: str) -> None:
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise MappingError(f"{len(names)} {what}: {shown}")


def _raise_collisions(steps: list[Step], targets, scheme: str) -> None:
    seen: dict[str, str] = {}
    for step in steps:
        for target in targets(step):
            if target in seen:
                raise MappingError(f"{seen[target]!r} and {step.canonical!r} both map to {scheme} name {target!r}")
            seen[target] = step.canonical


def apply_to_canonical(plan: Sequence[Step], foreign: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {step.canonical: step.transform.to_canonical([foreign[n] for n in step.foreign]) for step in plan}


def apply_from_canonical(plan: Sequence[Step], canonical: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for step in plan:
        out.update(zip(step.foreign, step.transform.to_foreign(canonical[step.canonical], len(step.foreign))))
    return out


# --- the tables ---

FACEBOOK = Scheme(
    "facebook",
    "facebookresearch/mae and timm: the canonical names",
    rules=(),
    passthrough=True,
)

MINDSPORE = Scheme(
    "mindspore",
    "maeconv's MindSpore twin: canonical names, but nn.LayerNorm's gamma/beta",
    rules=(
        Rule("{blocks}.{n}.{ln}.weight", "{blocks}.{n}.{ln}.gamma"),
        Rule("{blocks}.{n}.{ln}.bias", "{blocks}.{n}.{ln}.beta"),
        Rule("{norm}.weight", "{norm}.gamma"),
        Rule("{norm}.bias", "{norm}.beta"),
    ),
    passthrough=True,
)

SCHEMES: dict[str, Scheme] = {scheme.name: scheme for scheme in (FACEBOOK, MINDSPORE)}
SCHEME_ALIASES = {"timm": "facebook"}


def get_scheme(name: str) -> Scheme:
    name = SCHEME_ALIASES.get(name, name)
    if name not in SCHEMES:
        raise KeyError(f"unknown naming scheme {name!r}; known: {', '.join([*SCHEMES, *SCHEME_ALIASES])}")
    return SCHEMES[name]
