"""The rule expression language: what it accepts, what it refuses, what values mean."""

from __future__ import annotations

import pytest

from wyneos_core.model import LicenceResult, Node, NodeStatus
from wyneos_core.rules.expr import ExprError, parse
from wyneos_core.rules.interp import NO_LICENCE, EvalEnv, cluster_summary, evaluate, render, truthy
from wyneos_core.rules.ir import MISSING, BoolOp, Cmp, Const, IsMissing, Ref

# (expression, words the refusal must contain)
HOSTILE = [
    ("__import__('os').system('id')", "only the helper functions"),
    ("__import__('os')", "unknown function"),
    ("node.__class__", "not allowed"),
    ("node.__class__.__mro__[1].__subclasses__()", "not allowed"),
    ("node.metadata.__dict__", "not allowed"),
    ("node.metadata['__globals__']", "not allowed"),
    ("node._secret", "not allowed"),
    ("().__class__.__bases__[0]", "not allowed"),
    ("open('/etc/passwd')", "unknown function"),
    ("eval('1')", "unknown function"),
    ("exec('x=1')", "unknown function"),
    ("getattr(node, 'id')", "unknown function"),
    ("globals()", "unknown function"),
    ("lambda: 1", "lambda"),
    ("[x for x in node.metadata]", "comprehension"),
    ("{x for x in node.metadata}", "comprehension"),
    ("{k: v for k, v in node.metadata.items()}", "comprehension"),
    ("any(x for x in node.metadata)", "unknown function"),
    ("node.metadata.items()", "no methods"),
    ("node.id.upper()", "no methods"),
    ("9 ** 9 ** 9", "**"),
    ("node.load ** 1000000", "**"),
    ("2 << 10000", "bit shift"),
    ("~node.load", "bit operation"),
    ("-(" * 150 + "node.load" + ")" * 150, "nest"),
    ("not " * 60 + "node.isolated", "nested"),
    ("node.load < 0.9 and " * 95 + "True", "parts"),
    ("x" * 3000, "characters"),
    ("os.system", "unknown name"),
    ("sys", "unknown name"),
    ("node", "not a value"),
    ("node.nonexistent == 1", "has no field"),
    ("licence.secret_key", "has no field"),
    ("(x := 1)", "assignment"),
    ("1 if node.isolated else 2", "conditional"),
    ("f'{node.id}'", "f-string"),
    ("node.metadata[node.id]", "literal"),
    ("node.metadata[1:2]", "literal"),
    ("matches(*node.metadata)", "starred"),
    ("matches(node.id, pattern='x')", "keyword"),
    ("regex(node.id, '(')", "invalid regular expression"),
    ("version_at_least(node.metadata.version, 'latest')", "not a version"),
    ("matches(node.id, node.metadata.glob)", "string literal"),
    ("heartbeat_age(licence)", "node"),
    ("violated('load-ceiling')", "only available in"),
    ("node.load is None", "is missing"),
    ("node.metadata.x == None", "missing"),
    ("b'bytes' == node.id", "bytes"),
    ("10**400", "**"),
    ("123456789012345678901234567890 < node.load", "2**53"),
    ("node.isolated > True", "ordered"),
    ("1 / 0 < node.load", "division by zero"),
    ("node.load < 0.9 ;import os", "syntax"),
    ("\x00", "NUL"),
    ("await node", "await"),
    ("[1, 2]", "only allowed on the right of 'in'"),
    ("{'a': 1}", "mapping"),
    ("missing", "only allowed as"),
    ("cluster.size.real", "plain value"),
]


@pytest.mark.parametrize("text,words", HOSTILE, ids=[f"hostile{i}" for i in range(len(HOSTILE))])
def test_hostile_expressions_are_refused_clearly(text: str, words: str) -> None:
    with pytest.raises(ExprError) as info:
        parse(text)
    assert words.lower() in info.value.reason.lower(), info.value.reason


def test_at_least_thirty_hostile_cases() -> None:
    assert len(HOSTILE) >= 30


def test_refusal_names_the_column() -> None:
    with pytest.raises(ExprError) as info:
        parse('node.load < 0.9 and node.__class__ == 1')
    assert info.value.line == 1
    assert info.value.column == 26  # where "__class__" starts
    with pytest.raises(ExprError) as info:
        parse("node.load < 0.9 and\n  node.bogus == 1")
    assert (info.value.line, info.value.column) == (2, 3)


def test_accepted_forms_become_ir() -> None:
    assert parse("node.load < 0.9") == Cmp("<", Ref("node", "load"), Const(0.9))
    assert parse('node.metadata["zone-a"].rack') == Ref("node", "metadata", ("zone-a", "rack"))
    assert parse("0.2 < node.load < 0.9") == BoolOp("and", (
        Cmp("<", Const(0.2), Ref("node", "load")), Cmp("<", Ref("node", "load"), Const(0.9))))
    assert parse("has(node.metadata.x)") == IsMissing(Ref("node", "metadata", ("x",)), negated=True)
    assert parse("-3 < node.load") == Cmp("<", Const(-3), Ref("node", "load"))
    assert parse("60 * 5 < heartbeat_age(node)").left == Const(300)
    assert parse("violated('version-floor')", stage="enforcement") is not None


@pytest.mark.parametrize("text", [
    "node.load < 0.9", "node.metadata.region == 'eu' or not node.isolated",
    "node.load * 100 > cluster.mean_load + 5", "node.metadata.tags[0] in ['a', 'b']",
    "node.metadata.v is not missing", "-node.load < -0.5", "(node.load + 1) * 2 > 3",
])
def test_render_round_trips(text: str) -> None:
    expr = parse(text)
    assert parse(render(expr)) == expr


def _eval(text: str, node: Node, lic: LicenceResult = NO_LICENCE, now: float = 100.0, stage: str = "governance",
          violated: dict | None = None):
    env = EvalEnv(now, cluster_summary([node], now), violated or {})
    return evaluate(parse(text, stage), node, lic, env)


def test_missing_semantics() -> None:
    n = Node("a", NodeStatus.ONLINE, metadata={"region": "eu", "null": None, "n": 3, "flag": True})
    assert _eval("node.metadata.zone", n) is MISSING
    assert _eval("node.metadata.null", n) is MISSING  # null is missing too
    for text in ("node.metadata.zone == 'eu'", "node.metadata.zone != 'eu'", "node.metadata.zone < 3",
                 "node.metadata.zone in ['eu']", "node.metadata.zone not in ['eu']", "node.load > 0.5",
                 "node.load <= 0.5"):
        assert _eval(text, n) is False, text
    for text in ("not (node.metadata.zone == 'eu')", "node.metadata.zone is missing", "not has(node.load)",
                 "node.metadata.region.deeper is missing", "node.metadata.n.x is missing"):
        assert _eval(text, n) is True, text
    assert _eval("node.metadata.zone + 1", n) is MISSING
    assert truthy(_eval("node.metadata.zone", n)) is False


def test_kinds_never_mix() -> None:
    n = Node("a", metadata={"s": "3", "n": 3, "t": True, "one": 1})
    assert _eval("node.metadata.s == 3", n) is False
    assert _eval("node.metadata.s != 3", n) is True
    assert _eval("node.metadata.t == 1", n) is False
    assert _eval("node.metadata.one == True", n) is False
    assert _eval("node.metadata.s < 4", n) is False
    assert _eval("node.metadata.n == 3.0", n) is True
    assert _eval("node.metadata.s + 1", n) is MISSING


def test_arithmetic_is_bounded() -> None:
    n = Node("a", metadata={"big": 2**62, "zero": 0})
    assert _eval("node.metadata.big * 4", n) is MISSING
    assert _eval("node.metadata.big / node.metadata.zero", n) is MISSING
    assert _eval("node.metadata.big % node.metadata.zero", n) is MISSING
    assert _eval("node.metadata.big // 2", n) == 2**61


def test_helpers() -> None:
    n = Node("edge-7", NodeStatus.ONLINE, last_seen=90.0, metadata={"version": "v2.10.1-rc1", "bad": "x.y",
                                                                      "tags": ["gpu", "ssd"]})
    lic = LicenceResult("edge-7", True, features=("gpu",))
    assert _eval("heartbeat_age(node)", n, now=100.0) == 10.0
    assert _eval("heartbeat_age(node) > 5", Node("b"), now=100.0) is False  # never seen: missing
    assert _eval("matches(node.id, 'edge-*')", n) is True
    assert _eval("matches(node.metadata.missing, 'edge-*')", n) is False
    assert _eval("regex(node.id, '^edge-[0-9]+$')", n) is True
    assert _eval("version_at_least(node.metadata.version, '2.9')", n) is True  # numeric, not string, order
    assert _eval("version_below(node.metadata.version, '2.10.1')", n) is False
    assert _eval("version_at_least(node.metadata.bad, '1.0')", n) is MISSING
    assert _eval("entitled(licence, 'gpu')", n, lic) is True
    assert _eval("entitled(licence, 'gpu')", n, LicenceResult("edge-7", False, "expired", features=("gpu",))) is False
    assert _eval("length(node.metadata.tags) == 2", n) is True
    assert _eval("'gpu' in node.metadata.tags", n) is True
    assert _eval("'gpu' in licence.features", n, lic) is True
    assert _eval("violated('version-floor')", n, stage="healing", violated={"version-floor": {"edge-7"}}) is True
    assert _eval("node.status == 'online'", n) is True
    # no licence result: the licence step did not run (switched off), which is not a failure of the node
    assert _eval("licence.reason == 'not_evaluated' and not licence.valid", n) is True
