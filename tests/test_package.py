"""ledgerflow works installed: the wheel, in fresh virtualenvs outside the checkout.

Builds the sdist and the wheel (``python -m build``: the wheel is built from the unpacked sdist,
so both are proven complete), installs the pinned dependencies from ``requirements.lock``
(``--require-hashes``) and the wheel into a temporary virtualenv per supported Python, and runs
the installed ``ledgerflow``: a worker that connects to the suite's Temporal and serves a run on a
chain of its own, then ``verify`` of that run from every interpreter. Interpreters that are not
installed are skipped with the reason, except in CI (``CI`` set), where they must exist.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from ledgerflow.dev.stack import repo_root
from tests.support.isolated import IsolatedChain, clean_env, isolated_chain

pytestmark = pytest.mark.slow

ROOT = repo_root()
SUPPORTED = ("3.11", "3.12", "3.13")
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"


# ---- the lock files --------------------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str | None
    hashes: int


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, Pin]:
    """``name==version [; marker] --hash=...`` entries of a pip requirements file."""
    text = path.read_text().replace("\\\n", " ")
    pins: dict[str, Pin] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *hashes = line.split("--hash=")
        req = Requirement(spec.strip())
        assert len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==", line
        pins[_canonical(req.name)] = Pin(
            _canonical(req.name),
            next(iter(req.specifier)).version,
            str(req.marker) if req.marker else None,
            len(hashes),
        )
    return pins


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _applies(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({**default_environment(), "extra": extra})


@pytest.mark.parametrize(
    ("lock", "extras"), [(RUNTIME_LOCK, ()), (DEV_LOCK, ("dev",))], ids=["runtime", "dev"]
)
def test_locks_pin_everything_within_the_ranges_of_pyproject(
    lock: Path, extras: tuple[str, ...]
) -> None:
    pins = read_lock(lock)
    assert pins and all(p.hashes >= 1 for p in pins.values()), "every pin carries its hashes"
    project = _pyproject()["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    for req in wanted:
        if not _applies(req):
            continue
        pin = pins.get(_canonical(req.name))
        assert pin is not None, f"{req.name} is in pyproject.toml but not in {lock.name}"
        assert req.specifier.contains(pin.version, prereleases=True), (
            f"{lock.name} pins {req.name}=={pin.version} outside pyproject's {req.specifier}; "
            "refresh the lock files (docs/operations.md, 'Dependencies and the lock files')"
        )


def test_the_runtime_lock_agrees_with_the_dev_lock() -> None:
    runtime, dev = read_lock(RUNTIME_LOCK), read_lock(DEV_LOCK)
    assert set(runtime) <= set(dev)
    differ = {
        n: (p.version, dev[n].version) for n, p in runtime.items() if dev[n].version != p.version
    }
    assert not differ, f"the two lock files pin different versions: {differ}"


# ---- building --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(wheel, sdist), built like a release: ``python -m build`` (the wheel from the sdist)."""
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("ledgerflow-*.whl")
    (sdist,) = out.glob("ledgerflow-*.tar.gz")
    return wheel, sdist


def test_the_wheel_claims_only_the_ledgerflow_name(dist: tuple[Path, Path]) -> None:
    wheel, _ = dist
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["ledgerflow"]
        tops = {n.split("/", 1)[0] for n in names}
        assert tops == {"ledgerflow", top_level.split("/", 1)[0]}, tops
        # The repository's top-level workflows/ and activities/ live inside the namespace.
        assert "ledgerflow/workflows/procurement.py" in names
        assert "ledgerflow/activities/procurement.py" in names
        assert not any(n.startswith("ledgerflow_bench") for n in names)
        metadata = z.read(top_level.replace("top_level.txt", "METADATA")).decode()
    requires = {
        _canonical(Requirement(line.split(":", 1)[1].strip()).name)
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    declared = {_canonical(Requirement(r).name) for r in _pyproject()["project"]["dependencies"]}
    assert requires == declared


def test_the_contract_artifacts_ship_as_package_data(dist: tuple[Path, Path]) -> None:
    """The wheel and sdist carry the same bytes as contracts/artifacts (the one committed copy,
    itself checked against a fresh build in test_artifacts.py)."""
    from ledgerflow.chain.artifacts import artifacts_dir

    # In the checkout the package-data directory is a link to the committed copy, not a second one.
    assert artifacts_dir().resolve() == (ROOT / "contracts" / "artifacts").resolve()
    committed = {p.name: p.read_bytes() for p in (ROOT / "contracts" / "artifacts").glob("*.json")}
    assert committed
    wheel, sdist = dist
    with zipfile.ZipFile(wheel) as z:
        shipped = {
            n.rsplit("/", 1)[1]: z.read(n)
            for n in z.namelist()
            if n.startswith("ledgerflow/chain/contract-artifacts/")
        }
    assert shipped == committed
    with tarfile.open(sdist) as tar:
        in_sdist = {}
        for member in tar.getmembers():
            if "/ledgerflow/chain/contract-artifacts/" in member.name and member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                in_sdist[member.name.rsplit("/", 1)[1]] = fh.read()
    assert in_sdist == committed


# ---- installing ------------------------------------------------------------------------------


def find_python(version: str) -> str | None:
    """An interpreter for ``version`` (PATH, then pyenv's versions), or None."""
    candidates: list[str] = []
    if sys.version_info[:2] == tuple(int(x) for x in version.split(".")):
        candidates.append(sys.executable)
    if found := shutil.which(f"python{version}"):
        candidates.append(found)
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates += sorted(glob.glob(f"{pyenv_root}/versions/{version}.*/bin/python{version}"))[::-1]
    for candidate in candidates:
        probe = subprocess.run(
            [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    return None


def _run(
    argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@dataclass(frozen=True)
class Installed:
    version: str
    venv: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


class Installations:
    """One virtualenv per Python version, made on first use and kept for the module."""

    def __init__(self, base: Path, wheel: Path) -> None:
        self.base, self.wheel = base, wheel
        self._made: dict[str, Installed] = {}

    def get(self, version: str) -> Installed:
        if version in self._made:
            return self._made[version]
        python = find_python(version)
        if python is None:
            reason = f"Python {version} is not installed here (looked on PATH and in pyenv)"
            if os.environ.get("CI"):
                pytest.fail(f"{reason}; CI must test every supported Python")
            pytest.skip(reason)
        venv = self.base / f"venv-{version}"
        steps = [
            [python, "-m", "venv", str(venv)],
            [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--require-hashes",
             "-r", str(RUNTIME_LOCK)],
            [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--no-deps",
             str(self.wheel)],
            [str(venv / "bin/python"), "-m", "pip", "check"],
        ]  # fmt: skip
        for argv in steps:
            result = _run(argv, cwd=self.base)
            assert result.returncode == 0, (argv, result.stdout[-3000:], result.stderr[-3000:])
        self._made[version] = Installed(version, venv)
        return self._made[version]


@pytest.fixture(scope="module")
def installs(tmp_path_factory: pytest.TempPathFactory, dist: tuple[Path, Path]) -> Installations:
    base = tmp_path_factory.mktemp("installed")
    assert not base.resolve().is_relative_to(ROOT.resolve()), "must be outside the checkout"
    return Installations(base, dist[0])


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IsolatedChain]:
    with isolated_chain(tmp_path_factory.mktemp("package-chain")) as c:
        yield c


@dataclass(frozen=True)
class RecordedRun:
    workflow_id: str
    steps: int
    head: str
    env: dict[str, str]


@pytest.fixture(scope="module")
def recorded(installs: Installations, chain: IsolatedChain, temporal_address: str) -> RecordedRun:
    """A procurement served by the installed worker (Python 3.11), started by the installed CLI."""
    lf = installs.get("3.11")
    env = clean_env({**chain.ledgerflow_env(), "LEDGERFLOW_TEMPORAL_ADDRESS": temporal_address})
    cwd = installs.base  # outside the checkout: nothing may be found relative to it
    worker = subprocess.Popen(
        [lf.bin("ledgerflow"), "worker"],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wf_id = f"installed-{uuid.uuid4().hex[:8]}"
        payload = {"sku": "WIDGET-42", "quantity": 2, "simulate_delivery_after_seconds": 1}
        started = _run(
            [lf.bin("ledgerflow"), "start", "ProcurementWorkflow", "--input", json.dumps(payload),
             "--id", wf_id, "--wait", "--json"],
            cwd=cwd,
            env=env,
            timeout=180,
        )  # fmt: skip
        assert started.returncode == 0, (started.stdout, started.stderr, worker.poll())
        result = json.loads(started.stdout)["result"]
        assert result["outcome"] == "completed"
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            _, worker_err = worker.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            _, worker_err = worker.communicate()
    assert worker.returncode == 0, worker_err[-3000:]
    return RecordedRun(wf_id, result["steps"], result["head"], env)


def test_the_installed_package_runs_outside_the_checkout(installs: Installations) -> None:
    lf = installs.get("3.11")
    probe = _run(
        [lf.bin("python"), "-c",
         "import ledgerflow, ledgerflow.chain.artifacts as a, importlib.util as u; "
         "print(ledgerflow.__file__); print(a.artifacts_dir()); "
         "print([m for m in ('workflows', 'activities', 'worker') if u.find_spec(m)])"],
        cwd=installs.base,
        env=clean_env(),
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    package_file, artifacts, generic = probe.stdout.splitlines()
    assert Path(package_file).is_relative_to(lf.venv) and Path(artifacts).is_relative_to(lf.venv)
    assert generic == "[]"  # no generic top-level module names installed


def test_installed_anvil_lookup_says_where_it_looked(
    installs: Installations, tmp_path: Path
) -> None:
    lf = installs.get("3.11")
    find = "from ledgerflow.dev.stack import find_anvil; print(find_anvil())"
    env = clean_env({"PATH": f"{lf.venv / 'bin'}:/usr/bin:/bin"})
    missing = _run([lf.bin("python"), "-c", find], cwd=tmp_path, env=env)
    assert missing.returncode != 0
    assert "anvil not found; looked in PATH" in missing.stderr
    assert "LEDGERFLOW_ANVIL_BIN" in missing.stderr

    from ledgerflow.dev.stack import find_anvil

    anvil = find_anvil()  # the checkout's pinned binary
    found = _run(
        [lf.bin("python"), "-c", find],
        cwd=tmp_path,
        env={**env, "LEDGERFLOW_ANVIL_BIN": str(anvil)},
    )
    assert found.returncode == 0 and found.stdout.strip() == str(anvil), found.stderr


@pytest.mark.parametrize("version", SUPPORTED)
def test_each_supported_python_verifies_the_run(
    installs: Installations, recorded: RecordedRun, version: str
) -> None:
    lf = installs.get(version)
    help_ = _run([lf.bin("ledgerflow"), "--help"], cwd=installs.base, env=recorded.env)
    assert help_.returncode == 0 and "verify" in help_.stdout, help_.stderr
    verified = _run(
        [lf.bin("ledgerflow"), "verify", recorded.workflow_id, "--json"],
        cwd=installs.base,
        env=recorded.env,
        timeout=120,
    )
    assert verified.returncode == 0, (verified.stdout, verified.stderr)
    report = json.loads(verified.stdout)
    assert report["ok"] is True and report["first_bad_step"] is None
    assert (report["steps"], report["head"]) == (recorded.steps, recorded.head)
    assert report["history_checked"] is True and report["anchors"]
