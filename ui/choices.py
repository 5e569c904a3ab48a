"""What the dashboard's forms offer, taken from the shared vocabulary.

The bounds of the inputs are the ones the API enforces (`PARAMS`), so a form
cannot offer a value the API would refuse.
"""

from __future__ import annotations

from node.replica.vocabulary import PARAMS, SUBMITTABLE_TYPES, ParamSpec, SearchMode

# The types a form can fill: those that take a text (a query or a prompt).
FORM_TYPES = [t.value for t in SUBMITTABLE_TYPES if t.text_field]
# Hybrid first: the default of [rag] mode, and the best choice when in doubt.
FORM_MODES = [m.value for m in (SearchMode.HYBRID, SearchMode.VECTOR, SearchMode.KEYWORD)]
PARAM: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMS}


def bounds(name: str) -> dict[str, int | float]:
    """`start` and `end` of a Panel number input for the task parameter `name`."""
    spec = PARAM[name]
    assert spec.low is not None and spec.high is not None
    cast = int if spec.kind == "integer" else float
    return {"start": cast(spec.low), "end": cast(spec.high)}
