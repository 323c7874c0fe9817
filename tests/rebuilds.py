#!/usr/bin/env python3
"""Which crates would a cargo command compile that `cargo test --workspace --no-run` did not?

    python3 tests/rebuilds.py "build -p e2e --bins" "build -p spin-host -p cms-sandbox -p connect-sandbox"

Compares cargo's unit graphs (`--unit-graph`, unstable, enabled here with RUSTC_BOOTSTRAP=1; nothing is
built): a unit is reused only if its package, target, profile, mode, features and all its dependencies'
units are the same. Use it after changing dependencies or features: every command above should print 0.
If one does not, add the feature pins it needs (see the [dependencies] of tests/spin-host/Cargo.toml).
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def graph(args):
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    out = subprocess.run(["cargo"] + args + ["-Z", "unstable-options", "--unit-graph"],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    if out.returncode:
        sys.exit(out.stderr)
    units = json.loads(out.stdout)["units"]
    memo = {}

    def key(i):
        if i not in memo:
            u = units[i]
            profile = {k: v for k, v in u["profile"].items() if k != "name"}
            memo[i] = hash((u["pkg_id"], u["target"]["name"], tuple(u["target"]["kind"]),
                            json.dumps(profile, sort_keys=True), u["mode"], str(u["platform"]),
                            tuple(u["features"]), tuple(sorted(key(d["index"]) for d in u["dependencies"]))))
        return memo[i]

    return {key(i): units[i] for i in range(len(units))}


def main():
    base = graph("test --workspace --no-run".split())
    for spec in sys.argv[1:] or ["build -p e2e --bins", "build -p spin-host -p cms-sandbox -p connect-sandbox"]:
        new = [u for k, u in graph(spec.split()).items() if k not in base]
        names = sorted({u["pkg_id"].split("#")[-1] for u in new if u["mode"] == "build"})
        print(f"cargo {spec}: {len(names)} crates to compile {' '.join(names)}")


if __name__ == "__main__":
    main()
