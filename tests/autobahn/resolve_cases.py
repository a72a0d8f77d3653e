# Resolve the case selection of an Autobahn fuzzingclient spec file.
#
#   python2 resolve_cases.py SPEC.json   -> selected case ids, one a line
#
# Runs under the suite's own Python 2.7 (PREFIX/bin/python2 from install.sh)
# and uses the suite's own CaseSet.parseSpecCases, so the list is exactly what
# wstest will run. wstest hangs forever on an empty selection and writes no
# report for cases it never ran, so run.sh needs this list up front.
import json
import sys

from autobahntestsuite.caseset import CaseSet
from autobahntestsuite.case import (Cases, CaseCategories, CaseSubCategories,
                                    CaseSetname, CaseBasename)


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: resolve_cases.py SPEC.json\n")
        return 2
    with open(argv[1]) as f:
        spec = json.load(f)
    case_set = CaseSet(CaseSetname, CaseBasename, Cases, CaseCategories,
                       CaseSubCategories)
    for case_id in case_set.parseSpecCases(spec):
        sys.stdout.write(case_id + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
