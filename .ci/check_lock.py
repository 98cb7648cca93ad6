"""Fail when pyproject.toml and requirements/lock.txt disagree.

Two checks, both needed: every requirement pyproject declares (core and every extra) is pinned in the lock at a
version its range admits, and every package the lock says it pins *because fslm asked* ("# via fslm") is still
declared in pyproject. The first catches a new or narrowed dependency, the second a removed one. Refresh the lock with
`make lock` (docs in README, "Installing").
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")
# Extras whose pins conflict with the core lock: locked in their own virtualenv (requirements/vllm-lock.txt).
OWN_LOCK = {"vllm"}


def declared(pyproject: Path) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for name, extra in project.get("optional-dependencies", {}).items():
        if name not in OWN_LOCK:
            reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def all_is_union(pyproject: Path) -> list[str]:
    """`fslm[all]` lists every other extra's requirements (spelt out: a self-reference would put fslm in the lock)."""
    extras = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    if "all" not in extras:
        return []
    union = {
        str(Requirement(r)) for name, reqs in extras.items() if name not in ("all", "test", *OWN_LOCK) for r in reqs
    }
    listed = {str(Requirement(r)) for r in extras["all"]}
    return [f"pyproject.toml: extra 'all' misses {r}" for r in sorted(union - listed)] + [
        f"pyproject.toml: extra 'all' has {r}, which no other extra has" for r in sorted(listed - union)
    ]


def pinned(lock: Path) -> tuple[dict[str, Version], set[str]]:
    """Pins by canonical name, and the names the lock pins because fslm itself asked for them."""
    pins: dict[str, Version] = {}
    direct: set[str] = set()
    current = None
    for line in lock.read_text().splitlines():
        if m := PIN.match(line):
            current = canonicalize_name(m.group(1))
            pins[current] = Version(m.group(2))
        elif line and not line[0].isspace():
            current = None  # a line that pins nothing (e.g. `pkg @ url`, which a lock must not hold)
            if not line.startswith(("#", "-")):
                pins[line.split()[0]] = None  # type: ignore[assignment]
        elif current and re.match(r"^\s+#\s+(via\s+)?fslm\b", line):
            direct.add(current)
    return pins, direct


def problems(pyproject: Path, lock: Path) -> list[str]:
    pins, direct = pinned(lock)
    found = [f"{lock.name} holds an unpinned line for {name}" for name, v in pins.items() if v is None]
    found += all_is_union(pyproject)
    names = set()
    for req in declared(pyproject):
        name = canonicalize_name(req.name)
        names.add(name)
        if req.marker is not None and not req.marker.evaluate():
            continue
        if name not in pins:
            found.append(f"{req} is in pyproject.toml but not pinned in {lock.name}")
        elif not req.specifier.contains(pins[name], prereleases=True):
            found.append(f"{lock.name} pins {name}=={pins[name]}, outside pyproject.toml's {req}")
    for name in sorted(direct - names):
        found.append(f"{lock.name} pins {name} for fslm, but pyproject.toml no longer declares it")
    return found


def main(argv: list[str]) -> int:
    pyproject = Path(argv[1]) if len(argv) > 1 else ROOT / "pyproject.toml"
    lock = Path(argv[2]) if len(argv) > 2 else ROOT / "requirements" / "lock.txt"
    found = problems(pyproject, lock)
    for line in found:
        print(f"error: {line}; refresh it with `make lock`", file=sys.stderr)
    if not found:
        print(f"lock: {lock.relative_to(ROOT) if lock.is_relative_to(ROOT) else lock} agrees with pyproject.toml")
    return 2 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
