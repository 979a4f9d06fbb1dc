"""``wyneos check``, ``wyneos test`` and ``wyneos explain``: rulesets from the command line.

* ``check PATH...`` lints ruleset files (and ruleset test files): exit 0 when all load,
  1 with one ``file:line:column: field: reason`` line per mistake (every rule of a file
  is checked, so one broken rule does not hide another).
* ``test PATH...`` runs ruleset unit tests written in YAML (``wyneos_core.rules.testing``):
  exit 0 when every case passes, 1 otherwise.
* ``explain --node ID`` runs the configured orchestrator for ``--ticks`` ticks (1 by
  default, nothing persisted) and shows, for that node, every rule's state and the value
  of every part of its condition, and every action on it: why (rule or licence code),
  since when (from the state file, read only, when it has the action) and what clears it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["register"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_SUFFIXES = (".yaml", ".yml")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="lint ruleset files (exit 1 on any error, with file:line)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="ruleset files or directories (searched recursively)")
    p.add_argument("--engine", choices=["native", "durable"],
                   help="also check that every ruleset can run on this engine")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("test", help="run ruleset unit tests written in YAML")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="test files, rulesets (their test file is found next to them) or directories "
                        "(searched recursively)")
    p.add_argument("--engine", choices=["native", "durable"], help="run the rulesets on this engine")
    p.add_argument("--verbose", "-v", action="store_true", help="list passing cases too")
    p.add_argument("--format", choices=["text", "junit", "json"], default="text",
                   help="text (default), junit (JUnit XML for CI systems) or json, on stdout")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser("explain", help="show why each rule passed or failed for one node, and why its actions hold")
    p.add_argument("node_id", nargs="?", metavar="NODE", help="the node to explain")
    p.add_argument("--node", metavar="ID", help="the node to explain (as NODE)")
    p.add_argument("--server", metavar="URL", help="ask this running server (sees agent-enrolled nodes; "
                   "GET /v1/nodes/NODE/explain) instead of running the config")
    p.add_argument("--token-file", metavar="FILE", help="with --server: the operator token's file "
                   "(default: $WYNEOS_TOKEN_FILE, else $WYNEOS_TOKEN)")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config (default: the demo cluster)")
    p.add_argument("--state", metavar="FILE",
                   help="state file to read the actions in force from, read only (default: state.path)")
    p.add_argument("--ticks", type=int, default=1, help="ticks to run first, so rule states build up (default 1)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_explain, disable=[], only=None, trace=False)


def _files(paths: list[str]) -> tuple[list[Path], list[str]]:
    out: list[Path] = []
    missing: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.suffix in _SUFFIXES and f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            missing.append(raw)
    return out, missing


def cmd_check(args: argparse.Namespace) -> int:
    from wyneos_core.rules.loader import load_ruleset, start_durable
    from wyneos_core.rules.testing import is_test_file, run_test_file
    from wyneos_core.wording import plural
    from wyneos_core.yamlio import LocatedError, load_yaml

    files, missing = _files(args.paths)
    report: list[dict[str, Any]] = []
    for raw in missing:
        report.append({"file": raw, "ok": False, "error": {"file": raw, "line": None, "column": None, "field": None,
                                                            "reason": "no such file or directory"}})
    for path in files:
        try:
            located = load_yaml(path, surrogates=True)  # the loaders below report each, located
            if is_test_file(located):
                run_test_file(path, engine=args.engine)  # loads the ruleset and validates every case
                report.append({"file": str(path), "ok": True, "kind": "tests"})
                continue
            found: list[LocatedError] = []
            try:
                ruleset = load_ruleset(path, engine=args.engine, errors=found)  # type: ignore[arg-type]
            except LocatedError as exc:
                if not found:
                    raise
                report.append({"file": str(path), "ok": False, "error": exc.to_dict(), "message": str(exc),
                               "errors": [e.to_dict() for e in found],
                               "messages": [str(e) for e in found]})
                continue
            if ruleset.engine == "durable":
                start_durable(ruleset, timeout=60.0).close()  # durable-rules itself takes the rules
            report.append({"file": str(path), "ok": True, "kind": "ruleset", "ruleset": ruleset.name,
                           "stage": ruleset.stage, "rules": len(ruleset.rules)})
        except LocatedError as exc:
            every = getattr(exc, "errors", None) or [exc]  # a test file: every mistake at once
            report.append({"file": str(path), "ok": False, "error": exc.to_dict(), "message": str(exc),
                           "errors": [e.to_dict() for e in every],
                           "messages": [LocatedError.__str__(e) for e in every]})
        except ValueError as exc:  # DurableUnsupported for an --engine override
            report.append({"file": str(path), "ok": False, "message": f"{path}: {exc}",
                           "error": {"file": str(path), "reason": str(exc)}})
    failed = [r for r in report if not r["ok"]]
    if args.json:
        print(json.dumps({"ok": not failed, "files": report}, indent=2))
    else:
        for r in report:
            if r["ok"]:
                what = (f"ruleset {r['ruleset']!r} ({r['stage']}, {plural(r['rules'], 'rule')})"
                        if r["kind"] == "ruleset"
                        else "ruleset tests")
                print(f"ok    {r['file']}: {what}")
            else:
                for message in r.get("messages") or [r.get("message") or f"{r['file']}: {r['error']['reason']}"]:
                    print(message, file=sys.stderr)
        print(f"{len(report) - len(failed)} ok, {len(failed)} with errors")
    if not report:
        print("wyneos check: no ruleset files found", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_FAIL if failed else EXIT_OK


def test_file_candidates(ruleset: Path) -> list[Path]:
    """Where the test file of a ruleset ``DIR/NAME.yaml`` is looked for, in order."""
    stem, here = ruleset.stem, ruleset.parent
    names = [f"{stem}_test", f"{stem}.test", f"{stem}-test", f"test_{stem}"]
    return [d / (n + suffix) for d in (here / "tests", here) for n in names for suffix in _SUFFIXES]


def _test_files(paths: list[str]) -> tuple[list[Path], list[str]]:
    """Test files to run, and problems (``path: why``) with the paths given."""
    from wyneos_core.rules.testing import is_test_file
    from wyneos_core.yamlio import LocatedError, load_yaml

    out: list[Path] = []
    problems: list[str] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for f in sorted(f for f in p.rglob("*") if f.suffix in _SUFFIXES and f.is_file()):
                try:
                    if is_test_file(load_yaml(f, surrogates=True)):
                        out.append(f)
                except LocatedError:
                    out.append(f)  # reported as that file's error when it is run
            continue
        if not p.is_file():
            problems.append(f"{raw}: no such file or directory")
            continue
        try:
            located = load_yaml(p, surrogates=True)
        except LocatedError:
            out.append(p)
            continue
        if is_test_file(located):
            out.append(p)
            continue
        # a ruleset: its tests are in a file next to it
        found = next((c for c in test_file_candidates(p) if c.is_file()), None)
        if found is None:
            looked = ", ".join(str(c) for c in test_file_candidates(p) if c.suffix == ".yaml")
            problems.append(f"{raw}: a ruleset, not a test file, and no test file for it was found "
                            f"(looked for {looked}, and the same with .yml)")
        else:
            out.append(found)
    return list(dict.fromkeys(out)), problems


def cmd_test(args: argparse.Namespace) -> int:
    from wyneos_core.rules.testing import run_test_file
    from wyneos_core.yamlio import LocatedError

    files, problems = _test_files(args.paths)
    text = args.format == "text"
    runs: list[dict[str, Any]] = []
    for problem in problems:
        runs.append({"file": problem.split(": ", 1)[0], "errors": [problem], "cases": []})
    for path in files:
        try:
            name, outcomes = run_test_file(path, engine=args.engine)
        except LocatedError as exc:
            runs.append({"file": str(path), "errors": [LocatedError.__str__(e)
                                                       for e in getattr(exc, "errors", None) or [exc]],
                         "cases": []})
            continue
        runs.append({"file": str(path), "ruleset": name, "errors": [], "cases": [
            {"name": c.name, "passed": c.passed, "line": c.line,
             "failures": [{"message": m, "place": pl} for m, pl in zip(c.failures, c.places)]}
            for c in outcomes]})
    passed = sum(c["passed"] for r in runs for c in r["cases"])
    failed = sum(not c["passed"] for r in runs for c in r["cases"])
    broken = sum(bool(r["errors"]) for r in runs)
    if args.format == "json":
        print(json.dumps({"ok": failed == 0 and broken == 0, "passed": passed, "failed": failed,
                          "files_with_errors": broken, "files": runs}, indent=2))
    elif args.format == "junit":
        print(_junit(runs))
    else:
        for r in runs:
            for error in r["errors"]:
                print(error if error.startswith("ERROR ") else f"ERROR {error}", file=sys.stderr)
            for case in r["cases"]:
                where = f"{r['file']}:{case['line']}" if case["line"] else r["file"]
                if case["passed"]:
                    if args.verbose:
                        print(f"PASS  {where}: {r['ruleset']}: {case['name']}")
                    continue
                print(f"FAIL  {where}: {r['ruleset']}: {case['name']}")
                for failure in case["failures"]:
                    print(f"        {failure['place']}: {failure['message']}" if failure["place"]
                          else f"        {failure['message']}")
    total = passed + failed
    if text:
        print(f"{passed}/{total} ruleset test(s) passed" + (f", {broken} file(s) with errors" if broken else ""))
    if total == 0 and not broken:
        print("wyneos test: no ruleset test files found", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK if failed == 0 and broken == 0 else EXIT_FAIL


def _junit(runs: list[dict[str, Any]]) -> str:
    """JUnit XML (the format CI systems read): a testsuite per test file, a testcase per case."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name="wyneos test")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for r in runs:
        cases = r["cases"]
        suite = ET.SubElement(root, "testsuite", name=r.get("ruleset") or r["file"], file=r["file"],
                              tests=str(len(cases) + (1 if r["errors"] else 0)),
                              failures=str(sum(not c["passed"] for c in cases)),
                              errors=str(1 if r["errors"] else 0))
        if r["errors"]:
            case = ET.SubElement(suite, "testcase", name="load", classname=r["file"], file=r["file"])
            error = ET.SubElement(case, "error", message=r["errors"][0][:500], type="TestFileError")
            error.text = "\n".join(r["errors"])
            totals["tests"] += 1
            totals["errors"] += 1
        for c in cases:
            attrs = {"name": c["name"], "classname": r.get("ruleset") or r["file"], "file": r["file"]}
            if c["line"]:
                attrs["line"] = str(c["line"])
            case = ET.SubElement(suite, "testcase", attrs)
            totals["tests"] += 1
            if not c["passed"]:
                totals["failures"] += 1
                lines = [f"{f['place']}: {f['message']}" if f["place"] else f["message"] for f in c["failures"]]
                failure = ET.SubElement(case, "failure", message=lines[0][:500] if lines else "failed",
                                        type="ExpectationFailed")
                failure.text = "\n".join(lines)
    for key, value in totals.items():
        root.set(key, str(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True)


def cmd_explain(args: argparse.Namespace) -> int:
    from wyneos_core.cli.common import build
    from wyneos_core.explain import explain_node

    node_id = args.node_id or args.node
    if not node_id:
        print("wyneos explain: name the node: wyneos explain NODE", file=sys.stderr)
        return EXIT_USAGE
    if args.server:
        return _explain_remote(args, node_id)
    if args.ticks < 1:
        print("wyneos explain: --ticks must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    orchestrator = build(args, stdout_mode="none", store=False)
    orchestrator.config["report"]["json_path"] = None
    events: list[dict[str, Any]] = []
    from wyneos_core.builtin import trust as trust_plugin

    if "trust" in orchestrator.pm.origins:  # trust carries on from the state file, read only
        trust_plugin.restore_read_only(orchestrator, orchestrator.config.resolve(orchestrator.config["state"]["path"]))
    with orchestrator:
        for _ in range(args.ticks):
            report = orchestrator.tick()
            events.extend(report.lifecycle)
    node = orchestrator.registry.get(node_id)
    if node is None:
        known = ", ".join(n.id for n in orchestrator.registry)
        print(f"wyneos explain: no node {node_id!r} (nodes: {known}); a node enrolled by an agent is known to the "
              "server: wyneos explain NODE --server URL", file=sys.stderr)
        return EXIT_USAGE
    committed, times = _committed(orchestrator.config, node.id)
    out = explain_node(orchestrator, node, report, events, committed, times)
    out["installed_plugins"] = orchestrator.pm.installed_plugins()  # they took part in what is explained
    return _print_guarded(out, args.json)


def _explain_remote(args: argparse.Namespace, node_id: str) -> int:
    """``wyneos explain NODE --server URL``: the running server's explanation."""
    from urllib.parse import quote

    from wyneos_core.remote import Remote, RemoteError, read_token, server_url

    try:
        remote = Remote(server_url(args.server), read_token(args.token_file))
        out = remote.get(f"/v1/nodes/{quote(node_id, safe='')}/explain")
    except RemoteError as exc:
        print(f"wyneos explain: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return _print_guarded(out, args.json)


def _print_guarded(out: dict[str, Any], as_json: bool) -> int:
    try:
        _print_explain(out, as_json)
    except BrokenPipeError:  # `wyneos explain ... | head`: the reader has what it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is left to flush at exit goes nowhere
        os.close(devnull)
    return EXIT_OK


def _print_explain(out: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(out, indent=2, default=str))
        return
    node, lic = out["node"], out["licence"]
    print(f"node {node['id']}: status {node['status']}, load {node['load']}, isolated {node['isolated']}, "
          f"metadata {json.dumps(node['metadata'], sort_keys=True)}")
    print(f"licence: {'valid' if lic['valid'] else 'INVALID'} ({lic['reason']}) {lic['detail']}")
    print(f"after tick {out['tick']}")
    if out.get("installed_plugins"):
        print(f"installed plugins taking part: {', '.join(out['installed_plugins'])}")
    drift = out.get("drift")
    if drift:
        since = f" since {drift['since']:.0f}" if drift.get("since") is not None else ""
        fields = f" ({', '.join(drift['fields'])})" if drift.get("fields") else ""
        print(f"drift: {drift['state']}{fields}{since}, declared by {drift.get('declared_by')}")
    if not out["rulesets"]:
        print("no YAML rulesets are configured (rulesets.paths)")
    for rs in out["rulesets"]:
        print(f"\nruleset {rs['name']} ({rs['stage']}, engine {rs['engine']}) from {rs['file']}")
        for rule in rs["rules"]:
            extra = f", for {rule['for']}" if rule["for"] != "0 ticks" else ""
            acts = f" -> {', '.join(rule['actions'])}" if rule["actions"] else ""
            print(f"  {rule['id']}: {rule['verdict']}; state {rule['state']}{extra}{acts}")
            for line in rule["trace"]:
                print(f"      {line}")
    if out["python_rules"]:
        print("\nother rules that failed on this node (Python rules and plugins):")
        for r in out["python_rules"]:
            print(f"  {r['rule_id']} ({r['source']}): {r['message']}")
    _print_trust(out["trust"])
    _print_actions(node["id"], out["actions"])


def _committed(config: Any, node_id: str) -> tuple[list[dict[str, Any]], dict[int, float]]:
    """The state file's actions in force on ``node_id`` and when their ticks started
    (read only; none without a state file)."""
    from wyneos_core.store import StateStore

    path = config["state"]["path"]
    store = StateStore.open_read_only(path if path == ":memory:" else config.resolve(path))
    if store is None:
        return [], {}
    try:
        committed = [a for a in store.actions("in_force") if a["target"] == node_id]
        return committed, store.tick_times(a["first_tick"] for a in committed)
    finally:
        store.close()


def _print_actions(node_id: str, actions: list[dict[str, Any]]) -> None:
    import datetime as _dt

    print(f"\nactions on {node_id}:" + ("" if actions else " none"))
    for a in actions:
        status = {"in_force": "in force", "in_force_in_state_file": "in force (state file)"}.get(a["status"],
                                                                                                a["status"])
        since = ""
        if a["since_tick"] is not None:
            when = (f", {_dt.datetime.fromtimestamp(a['since'], _dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}"
                    if a["since"] else "")
            since = f" since tick {a['since_tick']} ({a['since_source']}{when})"
        print(f"  {a['type']} ({a['severity']}), {status}{since}" + (f": {a['detail']}" if a["detail"] else ""))
        cause = a["cause"]
        if cause["licence_code"]:
            print(f"    why: licence {cause['licence_code']} ({cause['licence_meaning'] or 'unknown code'})")
        elif cause["failing_rule"]:
            print(f"    why: rule {cause['failing_rule']} fails on the node")
        elif cause["kind"] == "rule":
            print(f"    why: rule {cause['rule']} fires on the node")
        elif cause["kind"] == "probation":
            print("    why: the node's isolation cleared and it was online for its probation")
        else:
            print(f"    why: plugin {cause['origin']} proposed it")
        if cause["rule"]:
            print(f"    rule: {cause['rule']}" + (f": when {a['rule_condition']}" if a["rule_condition"] else "")
                  + (f" ({a['rule_description']})" if a["rule_description"] else ""))
        print(f"    message: {a['reason']}")
        if a["pending_delivery"]:
            print("    not yet acknowledged by: " + ", ".join(f"{t} ({r})" for t, r in a["pending_delivery"].items()))
        if a["clears"]:
            print(f"    {a['clears']}")


def _print_trust(t: dict[str, Any] | None) -> None:
    if t is None:
        return
    adm = t["admission"] + (f" ({t['admission_rule']}: {t['admission_reason']})" if t["admission_reason"] else "")
    print(f"\ntrust {t['trust']:.4f}, tier {t['tier']}{', attested' if t['attested'] else ''}; admission {adm}")
    print(f"  behaviour {t['behaviour']:.4f} (weight {t['behaviour_weight']:g}), "
          f"peer {t['peer']:.4f} (weight {t['peer_weight']:g}, global trust share {t['global_trust']:.3g})")
    print(f"  {'signal':<17} {'weight':>6} {'score':>6} {'+evid':>7} {'-evid':>7} {'pull':>7} {'change':>7}")
    for sig in sorted(t["signals"], key=lambda x: -abs(x["pull"])):
        print(f"  {sig['signal']:<17} {sig['weight']:>6g} {sig['score']:>6.3f} {sig['positive']:>7.2f} "
              f"{sig['negative']:>7.2f} {sig['pull']:>+7.3f} {sig['change']:>+7.3f}")
    print("  (pull: how far the signal moves the combined score from its neutral 0.5; "
          "change: since the tick before)")
