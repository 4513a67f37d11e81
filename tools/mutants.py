"""`make mutants`: each mutation of tests/mutants.toml applied, alone, to a scratch copy of the repository, and the
fast suite run against it. A mutation the suite does not fail on SURVIVES: the fast suite would let that break
reach a node. Every mutation must be killed (issue 26); when one survives, add the test that kills it.

For speed, a mutation's own `tests` (the test files that should catch it) run first; a mutation they do not
kill is then judged by the whole fast suite (`pytest -m "not lab" -x`), which decides. --quick stops at the
targeted files (a survivor there is reported as "survives (targeted)").

    python tools/mutants.py [--quick] [--list] [NAME ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIST = ROOT / "tests" / "mutants.toml"
PYTEST = ["-m", "pytest", "-m", "not lab", "-x", "-q", "-p", "no:cacheprovider", "--no-header"]


@dataclass
class Mutant:
    name: str
    file: str
    original: str
    replacement: str
    why: str
    tests: list[str] = field(default_factory=list)


def load(path: Path = LIST) -> list[Mutant]:
    """The list, checked: every key present, names unique, files and test files existing."""
    with path.open("rb") as handle:
        entries = tomllib.load(handle).get("mutant", [])
    mutants, names = [], set()
    for number, entry in enumerate(entries, 1):
        missing = {"name", "file", "original", "replacement", "why"} - set(entry)
        extra = set(entry) - {"name", "file", "original", "replacement", "why", "tests"}
        if missing or extra:
            raise SystemExit(f"{path}: mutant #{number}: missing {sorted(missing)}, unknown {sorted(extra)}")
        mutant = Mutant(**entry)
        if mutant.name in names:
            raise SystemExit(f"{path}: mutant {mutant.name} is listed twice")
        names.add(mutant.name)
        if mutant.original == mutant.replacement:
            raise SystemExit(f"{path}: mutant {mutant.name}: the replacement is the original")
        for test in mutant.tests:
            if not (ROOT / test).is_file():
                raise SystemExit(f"{path}: mutant {mutant.name}: no test file {test}")
        mutants.append(mutant)
    return mutants


def apply(mutant: Mutant, root: Path) -> str:
    """Mutates the file under root; returns its original text. The original text must occur exactly once (a
    mutation that no longer applies is an error to fix in the list, never a silent pass)."""
    target = root / mutant.file
    if not target.is_file():
        raise SystemExit(f"mutant {mutant.name}: no file {mutant.file}")
    text = target.read_text()
    count = text.count(mutant.original)
    if count != 1:
        raise SystemExit(f"mutant {mutant.name}: its original text occurs {count} times in {mutant.file} "
                         "(the code changed: update tests/mutants.toml)")
    target.write_text(text.replace(mutant.original, mutant.replacement))
    return text


def scratch_copy() -> Path:
    """The repository's files (tracked and untracked, not ignored: the working tree as it is) in a temporary
    directory."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    root = Path(tempfile.mkdtemp(prefix="pgbackup-mutants-"))
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file() and not source.is_symlink():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def suite(root: Path, tests: list[str]) -> tuple[bool, str]:
    """(killed, the line that says so) of the fast suite (on every core, as `make unit` runs it), or of the given
    test files, run in root."""
    parallel = [] if tests or importlib.util.find_spec("xdist") is None else ["-n", "auto"]
    result = subprocess.run([sys.executable, *PYTEST, *parallel, *tests], cwd=root, capture_output=True, text=True,
                            check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode == 5:  # no test collected: nothing judged this mutation
        return False, "no tests ran"
    failed = [line.split(" - ")[0] for line in lines if line.startswith(("FAILED ", "ERROR "))]
    if result.returncode == 0:
        return False, lines[-1] if lines else ""
    return True, failed[0] if failed else (lines[-1] if lines else f"exit {result.returncode}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only each mutation's own test files")
    parser.add_argument("--list", action="store_true", help="check the list and print it, run nothing")
    parser.add_argument("names", nargs="*", help="only these mutations")
    args = parser.parse_args()
    mutants = load()
    unknown = set(args.names) - {m.name for m in mutants}
    if unknown:
        raise SystemExit(f"no such mutants: {sorted(unknown)}")
    chosen = [m for m in mutants if not args.names or m.name in args.names]
    root = scratch_copy()
    try:
        for mutant in chosen:  # every mutation still applies (checked before anything runs)
            (root / mutant.file).write_text(apply(mutant, root))
        if args.list:
            for mutant in chosen:
                print(f"{mutant.name:40} {mutant.file}: {mutant.why}")
            return 0
        # Unmutated, the targeted tests pass (else every mutation would look killed).
        baseline = sorted({test for mutant in chosen for test in mutant.tests})
        failing, by = suite(root, baseline)
        if failing:
            print(f"the unmutated copy fails its tests ({by}): fix that first", file=sys.stderr)
            return 2
        survivors, width = [], max(len(m.name) for m in chosen)
        print(f"{'mutant':{width}}  {'result':18}  {'s':>4}  by")
        for mutant in chosen:
            started = time.monotonic()
            text = apply(mutant, root)
            try:
                killed, by = suite(root, mutant.tests) if mutant.tests else (False, "")
                verdict = "killed"
                if not killed:
                    if args.quick:
                        verdict = "SURVIVES (targeted)"
                    else:
                        killed, by = suite(root, [])
                        verdict = "killed (full suite)" if killed else "SURVIVES"
            finally:
                (root / mutant.file).write_text(text)
            if not killed:
                survivors.append(mutant)
            print(f"{mutant.name:{width}}  {verdict:18}  {time.monotonic() - started:4.0f}  {by}", flush=True)
        print(f"\n{len(chosen) - len(survivors)} of {len(chosen)} mutations killed"
              + (f"; surviving: {', '.join(m.name for m in survivors)}" if survivors else ""))
        return 1 if survivors else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
