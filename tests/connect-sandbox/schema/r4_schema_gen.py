"""Regenerates r4_schema.txt, the FHIR R4 element table the connect emulator validates with.

LinuxForHealth connect validates every POST /fhir body with fhir.resources 6.x (pydantic 1.x models,
`extra = forbid`). This script reads those models and writes the model names connect accepts and, for
the types reachable from Bundle, Patient, Coverage, ExplanationOfBenefit, Organization and AuditEvent,
each element's JSON name, type, enforced cardinality, position in FHIR order and choice group, in
pydantic's field order (the order errors are reported in).

    python3 -m venv /tmp/fhirvenv
    /tmp/fhirvenv/bin/pip install "fhir.resources==6.4.0" "pydantic<2"
    /tmp/fhirvenv/bin/python r4_schema_gen.py > r4_schema.txt
"""
import textwrap
import typing

import fhir.resources
import pydantic
from pydantic.fields import SHAPE_LIST, SHAPE_SINGLETON

from fhir.resources import fhirtypes
from fhir.resources.fhirtypesvalidators import MODEL_CLASSES, get_fhir_model_class
from fhir.resources.resource import Resource

ROOTS = ["Bundle", "Patient", "Coverage", "ExplanationOfBenefit", "Organization", "AuditEvent", "Resource",
         "FHIRPrimitiveExtension"]
NOTES = []


def type_name(model, alias, field):
    t = field.type_
    if typing.get_origin(t) is typing.Union:
        args = [a for a in typing.get_args(t) if a is not type(None)]
        assert len(args) == 1, (model, alias, t)
        t = args[0]
    if t is bool:
        return "boolean"
    if hasattr(t, "is_primitive") and t.is_primitive():
        return t.fhir_type_name()
    if t is fhirtypes.ResourceType:
        return "Resource"
    name = t.__name__
    assert name.endswith("Type") and name[:-4] in MODEL_CLASSES, (model, alias, name)
    return name[:-4]


def items_optional(field):
    return typing.get_origin(field.type_) is typing.Union


def describe(name):
    cls = get_fhir_model_class(name)
    seq = cls.elements_sequence()
    by_alias = {f.alias: f for f in cls.__fields__.values()}
    for alias in by_alias:
        ok = alias in seq or alias in ("resource_type", "fhir_comments") or alias[1:] in seq
        assert ok, (name, alias)
    assert cls.__config__.extra == pydantic.Extra.forbid, name
    # Pre-root validators run in this order: required primitives, then choice groups.
    kinds = [v.__name__.rsplit("_", 1)[0] for v in cls.__pre_root_validators__]
    assert kinds in ([], ["validate_required_primitive_elements"], ["validate_one_of_many"],
                     ["validate_required_primitive_elements", "validate_one_of_many"],
                     ["validate_extension_or_fhir_comment"]), (name, kinds)
    # A required primitive is enforced only when that pre-root validator lists it (those with a
    # '_name' twin): Extension.url, for one, is 1..1 in R4 but never checked.
    enforced = []
    for v in cls.__pre_root_validators__:
        if v.__name__.startswith("validate_required_primitive_elements"):
            for c in v.__code__.co_consts:
                pairs = c if isinstance(c, tuple) and c and isinstance(c[0], tuple) else [c]
                for p in pairs:
                    if isinstance(p, tuple) and len(p) == 2 and p[1] == p[0] + "__ext":
                        enforced.append(p[0])
            assert enforced, name
    assert enforced == [a for a in by_alias if a in enforced], (name, enforced)
    lines = []
    for field in cls.__fields__.values():
        alias = field.alias
        if alias not in seq:
            continue
        tn = type_name(name, alias, field)
        assert field.shape in (SHAPE_LIST, SHAPE_SINGLETON), (name, alias)
        many = field.shape == SHAPE_LIST
        extra = field.field_info.extra
        required = field.required or alias in enforced
        if extra.get("element_required", False) and not required:
            NOTES.append(f"{name}.{alias}")
        twin = ("_" + alias) in by_alias
        assert twin <= tn[0].islower(), (name, alias)
        assert not (tn[0].islower() and field.required), (name, alias)
        line = f"  {alias} {tn} {int(required)}..{'*' if many else '1'} {seq.index(alias)}"
        if extra.get("one_of_many"):
            line += f" {extra['one_of_many']}{'!' if extra.get('one_of_many_required') else ''}"
        if tn[0].islower() and not twin:
            line += " no_"
        if many and tn[0].islower() and items_optional(field):
            line += " null_"
        if twin and many:
            # The `_x` list of a primitive list always takes nulls, to stay aligned with `x`.
            assert items_optional(by_alias["_" + alias]), (name, alias)
        lines.append(line)
    kind = "R" if issubclass(cls, Resource) else "T"
    module = cls.__module__.rsplit(".", 1)[1]
    return [f"{kind} {name} {module}"] + lines, [l.split()[1] for l in lines]


def main():
    seen, todo, out = set(), list(ROOTS), []
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        lines, refs = describe(name)
        out.append((name, lines))
        todo += [r for r in refs if r[0].isupper() and r != "Resource" and r not in seen]
    print("# FHIR R4 element table for the LinuxForHealth connect emulator. Generated by r4_schema_gen.py")
    print(f"# from fhir.resources {fhir.resources.__version__} (pydantic {pydantic.VERSION}); do not edit by hand.")
    print("# '@names': every model name connect's POST /fhir/{type} accepts (fhir.resources MODEL_CLASSES).")
    print("# '@types': 'R|T Name module', then one line per element in pydantic field order:")
    print("#   json-name type min..max position-in-FHIR-order [choice-group, '!' when one is required]")
    print("#   [no_: a primitive without the '_name' extension twin] [null_: a primitive list that takes nulls]")
    print("# 1..1 in R4 but not enforced by fhir.resources, so 0..1 here:")
    print("\n".join(textwrap.wrap(" ".join(NOTES), 110, initial_indent="#   ", subsequent_indent="#   ")))
    print("@names")
    print("\n".join(textwrap.wrap(" ".join(sorted(MODEL_CLASSES)), 110)))
    print("@types")
    for _, lines in sorted(out):
        print("\n".join(lines))


main()
