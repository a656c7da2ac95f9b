"""The tools the Helm chart's tests run, built or installed once and cached.

- helmcheck (deploy/helm/check): Helm v4 (its `lint` and `template`, from Helm's own Go code
  at the version pinned in go.mod) and a strict decoder of rendered objects against the
  Kubernetes, KEDA and Prometheus-operator API types. Built with the machine's Go into
  ${KAFKA_CACHE_DIR:-~/.cache/jobpipe}/helmcheck/<hash of its sources>/; Go's module and build
  caches are its usual ones (~/go/pkg/mod, ~/.cache/go-build).
- checkov, at the version pinned in deploy/helm/checkov-constraints.txt (with every one of its
  dependencies), in a venv of its own under the same cache: its dependency set does not fit
  the project's constraints.txt, and the services never import it.

A missing tool (no `go`, no network to the registries) FAILS the tests with the reason.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HELM_DIR = REPO / "deploy" / "helm"
CHECK_DIR = HELM_DIR / "check"
CHECKOV_CONSTRAINTS = HELM_DIR / "checkov-constraints.txt"
KEDA_MODULE = "github.com/kedacore/keda/v2"


def cache_dir() -> Path:
    return Path(os.environ.get("KAFKA_CACHE_DIR") or Path.home() / ".cache" / "jobpipe")


def run(cmd: list[str], *, cwd: Path | None = None, timeout: float = 120,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One builder at a time (two pytest runs on one machine share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _go_env() -> dict[str, str]:
    # The machine's Go (go.mod needs no newer one), the module proxy for modules, go.sum as is.
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly"}


def build_helmcheck() -> tuple[Path, float]:
    """The helmcheck binary, and how long building it took here (0 when it was cached)."""
    go = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if go is None:
        pytest.fail("go not found: the chart's tests build deploy/helm/check with Go 1.26+", pytrace=False)
    digest = hashlib.sha256()
    for source in sorted(CHECK_DIR.glob("*")):
        if source.suffix in (".go", ".mod", ".sum"):
            digest.update(source.name.encode() + source.read_bytes())
    target = cache_dir() / "helmcheck" / digest.hexdigest()[:16] / "helmcheck"
    with locked(cache_dir() / "helmcheck" / ".lock"):
        if target.exists():
            return target, 0.0
        started = time.monotonic()
        partial = target.with_suffix(".partial")
        partial.parent.mkdir(parents=True, exist_ok=True)
        proc = run([go, "build", "-trimpath", "-o", str(partial), "."], cwd=CHECK_DIR, timeout=1800,
                   env=_go_env())
        if proc.returncode != 0:
            pytest.fail(f"building deploy/helm/check failed (exit {proc.returncode}):\n"
                        f"{proc.stderr[-3000:]}", pytrace=False)
        partial.rename(target)
        return target, time.monotonic() - started


def keda_scalers_schema() -> Path:
    """KEDA's own list of each scaler's parameters, from the KEDA module go.mod pins."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    proc = run([go, "list", "-m", "-f", "{{.Dir}}", KEDA_MODULE], cwd=CHECK_DIR, env=_go_env())
    path = Path(proc.stdout.strip()) / "schema" / "generated" / "scalers-schema.json"
    if proc.returncode != 0 or not path.exists():
        pytest.fail(f"KEDA's scalers-schema.json not found ({proc.stderr.strip()[-500:]})", pytrace=False)
    return path


def checkov_version() -> str:
    for line in CHECKOV_CONSTRAINTS.read_text().splitlines():
        if line.startswith("checkov=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{CHECKOV_CONSTRAINTS} pins no checkov")


def install_checkov() -> tuple[Path, float]:
    """checkov in its own venv, with the pinned dependency set; how long installing took here."""
    digest = hashlib.sha256(CHECKOV_CONSTRAINTS.read_bytes()).hexdigest()[:16]
    venv = cache_dir() / f"checkov-{checkov_version()}-{digest}"
    checkov = venv / "bin" / "checkov"
    with locked(cache_dir() / "checkov.lock"):
        if checkov.exists():
            return checkov, 0.0
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        made = run([sys.executable, "-m", "venv", str(venv)], timeout=300)
        if made.returncode != 0:
            pytest.fail(f"python -m venv {venv}: {made.stderr[-1000:]}", pytrace=False)
        proc = run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "-r", str(CHECKOV_CONSTRAINTS)], timeout=1200)
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            pytest.fail(f"installing checkov into {venv} failed (exit {proc.returncode}):\n"
                        f"{proc.stderr[-3000:]}", pytrace=False)
        return checkov, time.monotonic() - started


def main() -> None:
    """`python -m tests.deploy.helm_tools`: build helmcheck and install checkov now (make test
    starts this in the background, so the chart's tests find them ready), printing the times."""
    try:
        binary, built = build_helmcheck()
        print(f"helmcheck: {binary} ({built:.0f} s to build)", flush=True)
        checkov, installed = install_checkov()
        print(f"checkov: {checkov} ({installed:.0f} s to install)", flush=True)
    except pytest.fail.Exception as error:
        sys.exit(f"tests.deploy.helm_tools: {error}")


if __name__ == "__main__":
    main()
