#!/usr/bin/env python3
"""count_tests.py — sum test results from meson testlog.json files into one plain line.

A doctest suite counts its test cases (from doctest's summary line); any other test (the
examples' smoke runs, the format check) counts as one. A suite that failed at the process level
with no failed test case (a crash, a sanitizer report) counts one more failure.
Prints: "N passed, N failed". Exit status 1 if anything failed.
"""
import json
import os
import re
import sys

SUMMARY = re.compile(r"\[doctest\] test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed")

args = sys.argv[1:]
if args[:1] == ["--show"]:  # print each suite's doctest summary lines, then stop
    for path in args[1:]:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            for line in f:
                entry = json.loads(line)
                for text in (entry.get("stdout") or "").splitlines():
                    if text.startswith("[doctest] test cases") or text.startswith("[doctest] assertions"):
                        print(f"{entry['name']}: {text}")
    sys.exit(0)
passed = failed = 0
while args[:1] == ["--extra-failed"]:  # one check run outside meson (format, README): 0 or 1
    extra = int(args[1])
    passed += 1 - extra
    failed += extra
    args = args[2:]
for path in args:
    if not os.path.exists(path):  # the run never started: count it as a failure
        print(f"missing test log {path}")
        failed += 1
        continue
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            ok = entry.get("result") in ("OK", "EXPECTEDFAIL")
            m = SUMMARY.search(entry.get("stdout") or "")
            if m:
                passed += int(m.group(2))
                failed += int(m.group(3))
                if not ok and int(m.group(3)) == 0:
                    failed += 1
            elif ok:
                passed += 1
            else:
                failed += 1
print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
