#!/usr/bin/env python3
"""Judge an Autobahn|Testsuite fuzzingclient report.

    summarize.py --outdir DIR --agent NAME --cases FILE --counts FILE

DIR is the spec's outdir (holding index.json and the per-case JSON reports),
FILE (--cases) lists the selected case ids one a line, as resolved before the
run. Prints counts per behavior and per behaviorClose and every failing case;
writes "PASSED FAILED" to the --counts file (run.sh prints the closing
"autobahn: N passed, N failed" line from it, after the daemon's log).

Pass rule: behavior in {OK, NON-STRICT, INFORMATIONAL} and
behaviorClose in {OK, INFORMATIONAL}. A selected case that is missing from the
report (wstest was killed, timed out, could not connect...) fails.

Exit status: 0 when nothing failed and every selected case passed, else 1.
"""

import argparse
import json
import os
import re
import sys
import textwrap
from collections import Counter

# UNIMPLEMENTED fails: the daemon negotiates permessage-deflate, so sections 12 and 13
# must pass, not be skipped.
PASS_BEHAVIOR = {"OK", "NON-STRICT", "INFORMATIONAL"}
PASS_CLOSE = {"OK", "INFORMATIONAL"}
MAX_TEXT = 400  # characters of a case's result text to show


def case_key(case_id):
    """Sort "9.10.2" after "9.2.1"."""
    return [int(p) if p.isdigit() else p for p in case_id.split(".")]


def load_json(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def shorten(text):
    text = re.sub(r"<[^>]*>", " ", str(text))  # descriptions carry HTML
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 4] + " ..."


def format_counts(counter):
    if not counter:
        return "(none)"
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--outdir", required=True)
    ap.add_argument("--agent", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--counts", required=True)
    args = ap.parse_args()

    with open(args.cases, encoding="utf-8") as f:
        selected = [line.strip() for line in f if line.strip()]

    index = load_json(os.path.join(args.outdir, "index.json"))
    if index is None:
        print("autobahn: no readable index.json in the report (wstest killed or crashed?)")
        results = {}
    else:
        results = index.get(args.agent, {})
        if not results:
            print(f"autobahn: index.json has no results for agent {args.agent!r}")

    behavior, behavior_close = Counter(), Counter()
    passed, failing, missing = 0, [], []
    for case_id in selected:
        res = results.get(case_id)
        if res is None:
            missing.append(case_id)
            continue
        beh, close = res.get("behavior", "?"), res.get("behaviorClose", "?")
        behavior[beh] += 1
        behavior_close[close] += 1
        if beh in PASS_BEHAVIOR and close in PASS_CLOSE:
            passed += 1
        else:
            failing.append((case_id, res))
    failed = len(failing) + len(missing)

    extra = sorted(set(results) - set(selected), key=case_key)
    print(f"autobahn: {len(selected)} cases selected, {len(selected) - len(missing)} in the report"
          + (f" (+{len(extra)} not selected, ignored)" if extra else ""))
    print(f"  behavior:      {format_counts(behavior)}")
    print(f"  behaviorClose: {format_counts(behavior_close)}")

    if failing:
        print(f"failing cases ({len(failing)}):")
        for case_id, res in failing:
            print(f"  {case_id}: behavior={res.get('behavior')} "
                  f"behaviorClose={res.get('behaviorClose')} "
                  f"remoteCloseCode={res.get('remoteCloseCode')} "
                  f"duration={res.get('duration')}ms")
            report = None
            if res.get("reportfile"):
                report = load_json(os.path.join(args.outdir, res["reportfile"]))
            if report is None:
                print("      (no per-case report)")
                continue
            if report.get("description"):
                print(f"      case:   {shorten(report['description'])}")
            if report.get("result"):
                print(f"      result: {shorten(report['result'])}")
            if report.get("resultClose"):
                print(f"      close:  {shorten(report['resultClose'])}")
    if missing:
        print(f"missing from the report, counted as failed ({len(missing)}):")
        print(textwrap.fill(" ".join(missing), width=100,
                            initial_indent="  ", subsequent_indent="  "))

    with open(args.counts, "w", encoding="utf-8") as f:
        f.write(f"{passed} {failed}\n")
    ok = failed == 0 and passed == len(selected) and len(selected) > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
