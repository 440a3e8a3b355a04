"""YAML as kustomize reads it and as ``kubectl kustomize`` writes it, so our renders are byte-identical.

kustomize parses with go-yaml v3 (YAML 1.2 core scalars: ``yes`` and ``on`` are strings), turns every object into
JSON and writes it back with go-yaml v2: map keys in v2's natural order, a string quoted (double quotes) whenever
YAML 1.1 would read it as something else (``"y"``, ``"on"``, ``"2024-01-01"``), literal blocks for multi-line
strings, floats in Go's shortest form. PyYAML's emitter is a port of the same libyaml emitter, so only the
resolver, the key order and the representers need to follow go-yaml here.
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal
from typing import Any

import yaml

Obj = dict[str, Any]

_INT = re.compile(r"^[-+]?(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|0[0-7_]*|[1-9][0-9_]*)$")
_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_BASE60 = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_TIMESTAMP = re.compile(
    r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}(([Tt]|[ \t]+)[0-9]{1,2}:[0-9]{2}:[0-9]{2}(\.[0-9]*)?"
    r"(Z|[-+][0-9]{1,2}(:[0-9]{2})?)?)?$"
)
_V2_MAP = {
    **dict.fromkeys(
        "y Y yes Yes YES true True TRUE on On ON n N no No NO false False FALSE off Off OFF".split(), "bool"
    ),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], "null"),
    **dict.fromkeys(".nan .NaN .NAN .inf .Inf .INF +.inf +.Inf +.INF -.inf -.Inf -.INF".split(), "float"),
}


def _go_int(s: str) -> int:
    """strconv.ParseInt(s, 0, 64) after removing underscores: a leading 0 means octal."""
    sign, body = (-1, s[1:]) if s[:1] == "-" else (1, s.lstrip("+"))
    body = body.replace("_", "")
    if body[:2].lower() in ("0x", "0o", "0b"):
        return sign * int(body, 0)
    return sign * (int(body, 8) if len(body) > 1 and body[0] == "0" else int(body))


def _v2_tag(s: str) -> str:
    """The tag go-yaml v2 (kubectl's writer) would resolve the plain scalar ``s`` to: str, int, float, ..."""
    if s in _V2_MAP:
        return _V2_MAP[s]
    if not s or s[0] not in "+-.0123456789":
        return "str"
    if s[0] == "." and _FLOAT.match(s):
        return "float"
    if s[0] != ".":
        if _TIMESTAMP.match(s):
            return "timestamp"
        if _INT.match(s.replace("_", "")) or _FLOAT.match(s.replace("_", "")):
            return "int" if _INT.match(s.replace("_", "")) else "float"
    return "float" if _BASE60.match(s) else "str"


class Loader(yaml.SafeLoader):
    """YAML 1.2 core scalars, as kustomize's reader resolves them: `yes`, `on` and dates stay strings."""


Loader.yaml_implicit_resolvers = {}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^([-+]?(\.[0-9]+|[0-9][0-9_]*(\.[0-9_]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN))$"
    ),
    list("-+.0123456789"),
)
Loader.add_constructor("tag:yaml.org,2002:int", lambda ld, node: _go_int(ld.construct_scalar(node)))
_GO_TIME = re.compile(
    r"^([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})(?:(?:[Tt]([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})(\.[0-9]+)?"
    r"(Z|[-+][0-9]{2}:[0-9]{2}))|(?: ([0-9]{1,2}):([0-9]{1,2}):([0-9]{1,2})(\.[0-9]+)?))?$"
)


def _go_timestamp(ld: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    """A plain timestamp becomes a Go time and reaches the output as RFC 3339 (``2024-01-01T00:00:00Z``)."""
    value = ld.construct_scalar(node)
    m = _GO_TIME.match(value)
    if m is None:  # a shape go-yaml does not parse as a time stays a string
        return value
    y, mo, d = (int(g) for g in m.group(1, 2, 3))
    h, mi, sec, frac, zone = m.group(4, 5, 6, 7, 8) if m.group(4) else (*m.group(9, 10, 11, 12), None)
    frac = (frac or "").rstrip("0").rstrip(".")
    zone = "Z" if zone in (None, "Z", "+00:00") else zone
    return f"{y:04d}-{mo:02d}-{d:02d}T{int(h or 0):02d}:{int(mi or 0):02d}:{int(sec or 0):02d}{frac}{zone}"


Loader.add_implicit_resolver("tag:yaml.org,2002:timestamp", _TIMESTAMP, list("0123456789"))
Loader.add_constructor("tag:yaml.org,2002:timestamp", _go_timestamp)


class _Dumper(yaml.SafeDumper):
    """Writes what go-yaml v2 writes for kustomize's JSON: sorted keys, quoting by YAML 1.1 resolution."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            tag = _v2_tag(value)
            return "tag:yaml.org,2002:" + ("float" if tag == "str" and _BASE60.match(value) else tag)
        return super().resolve(kind, value, implicit)


def _v2_key_less(a: str, b: str) -> bool:
    """go-yaml v2's map-key order: runs of digits compare as numbers, letters after other characters."""
    for i in range(min(len(a), len(b))):
        if a[i] == b[i]:
            continue
        al, bl = a[i].isalpha(), b[i].isalpha()
        if al and bl:
            return a[i] < b[i]
        if al or bl:
            return bl
        an = bn = 0
        if a[i] == "0" or b[i] == "0":
            j = i - 1
            while j >= 0 and a[j].isdigit():
                if a[j] != "0":
                    an = bn = 1
                    break
                j -= 1
        ai = i
        while ai < len(a) and a[ai].isdigit():
            an, ai = an * 10 + int(a[ai]), ai + 1
        bi = i
        while bi < len(b) and b[bi].isdigit():
            bn, bi = bn * 10 + int(b[bi]), bi + 1
        if an != bn:
            return an < bn
        if ai != bi:
            return ai < bi
        return a[i] < b[i]
    return len(a) < len(b)


def _go_float(x: float) -> str:
    """strconv.FormatFloat(x, 'g', -1, 64): shortest digits, exponent form below 1e-4 or from 1e6 (shortest mode)."""
    if x != x or x in (float("inf"), float("-inf")):
        return ".nan" if x != x else (".inf" if x > 0 else "-.inf")
    _, digits, exp = Decimal(repr(abs(x))).normalize().as_tuple()
    mant = "".join(map(str, digits))
    point = len(mant) + int(exp)  # position of the decimal point in the digit string
    sign = "-" if x < 0 else ""
    if not -4 <= point - 1 < 6:
        e = point - 1
        return f"{sign}{mant[0]}{'.' + mant[1:] if len(mant) > 1 else ''}e{'-' if e < 0 else '+'}{abs(e):02d}"
    if point <= 0:
        return f"{sign}0.{'0' * -point}{mant}"
    return sign + (mant + "0" * point)[:point] + ("." + mant[point:] if mant[point:] else "")


def _represent_dict(d: yaml.SafeDumper, data: dict) -> yaml.Node:
    keys = sorted(
        data, key=functools.cmp_to_key(lambda a, b: -1 if _v2_key_less(a, b) else (1 if a != b else 0))
    )
    return d.represent_mapping("tag:yaml.org,2002:map", [(k, data[k]) for k in keys])


def _represent_str(d: yaml.SafeDumper, s: str) -> yaml.Node:
    if "\n" in s:
        return d.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    plain = _v2_tag(s) == "str" and not _BASE60.match(s)
    return d.represent_scalar("tag:yaml.org,2002:str", s, style=None if plain else '"')


def _represent_float(d: yaml.SafeDumper, x: float) -> yaml.Node:
    if x == int(x) and abs(x) < 2**63:  # a whole float went through JSON as an integer
        return d.represent_int(int(x))
    return d.represent_scalar("tag:yaml.org,2002:float", _go_float(x))


_Dumper.add_representer(dict, _represent_dict)
_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(float, _represent_float)


def load_docs(text: str) -> list[Obj]:
    return [d for d in yaml.load_all(text, Loader=Loader) if d is not None]


def dump_docs(objs: list[Obj]) -> str:
    return "---\n".join(
        yaml.dump(o, Dumper=_Dumper, allow_unicode=True, default_flow_style=False, width=80) for o in objs
    )
