#!/usr/bin/env python3
"""check_readme.py — the README's C++ code blocks are the examples' code, so they cannot rot.

Every ```cpp block in README.md must be introduced, in the text since the previous block, by
the path of an example (`examples/NAME.cpp`), and must appear in that file verbatim, as a run
of whole lines (trailing whitespace ignored). The examples are built and run by the test
suite, so a block that passes here compiles and does what the README says.
Prints one line per block; exit status 1 if any block differs or names no example.
Usage: check_readme.py [README] (default: README.md at the repository root)
"""
import os
import re
import sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
readme = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "README.md")
base = os.path.dirname(os.path.abspath(readme))
lines = open(readme, encoding="utf-8").read().split("\n")

EXAMPLE = re.compile(r"`(examples/[A-Za-z0-9_/]+\.cpp)`")
failures = blocks = 0
prose = []  # lines since the previous block
i = 0
while i < len(lines):
    fence = lines[i].strip()
    if not fence.startswith("```"):
        prose.append(lines[i])
        i += 1
        continue
    start = i + 1
    end = start
    while end < len(lines) and lines[end].strip() != "```":
        end += 1
    if fence == "```cpp":
        blocks += 1
        named = EXAMPLE.findall("\n".join(prose))
        where = f"README.md:{start}"
        block = [l.rstrip() for l in lines[start:end]]
        if not named:
            print(f"{where}: a cpp block that names no `examples/....cpp` before it")
            failures += 1
        else:
            path = named[-1]  # the nearest mention before the block
            source = [l.rstrip() for l in open(os.path.join(base, path), encoding="utf-8")
                      .read().split("\n")]
            n = len(block)
            found = any(source[k:k + n] == block for k in range(len(source) - n + 1))
            if found:
                print(f"{where}: {n} lines, verbatim in {path}: ok")
            else:
                # Name the first block line the file does not contain, to point at the drift.
                first = next((l for l in block if l.strip() and l not in source), block[0])
                print(f"{where}: not verbatim in {path} (e.g. this line is not in it: {first!r})")
                failures += 1
    prose = []
    i = end + 1

if blocks == 0:
    print("README.md has no cpp block: nothing checked")
    failures += 1
print(f"readme: {blocks - failures} of {blocks} cpp blocks are the examples' code")
sys.exit(1 if failures else 0)
