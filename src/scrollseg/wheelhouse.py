"""Build a folder of wheels that installs scrollseg offline (Kaggle inference notebooks
have no internet). The dependencies are the ones scrollseg's own wheel declares
(read with importlib.metadata), so the list lives in one place: pyproject.toml.
torch is left out: Kaggle's images and most machines already carry a CUDA build."""
from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from .errors import ScrollsegError

PROVIDED = {"torch"}  # taken from the machine


def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ScrollsegError("this command needs a source checkout of scrollseg; run it from a clone (pip install -e .)")
    return root


def requirement_name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0).lower().replace("_", "-")


def runtime_requirements(wheel: Path) -> list[str]:
    """The requirements a wheel's metadata declares, without extras and without PROVIDED."""
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    requires = importlib.metadata.PathDistribution(zipfile.Path(wheel, metadata.rsplit("/", 1)[0] + "/")).requires or []
    return [r for r in requires if "extra ==" not in r and requirement_name(r) not in PROVIDED]


def build_wheelhouse(out: Path | str, with_dependencies: bool = True, python_version: str | None = None, platform: str | None = None) -> list[Path]:
    """Wheels of scrollseg and (optionally) its dependencies but torch, with theirs, in ``out``.

    ``python_version``/``platform`` (e.g. ``3.11`` / ``manylinux2014_x86_64``) fetch the
    dependencies' binary wheels for another machine, such as Kaggle's image.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    try:
        subprocess.run(pip + ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(project_root())], check=True)
        own = max(out.glob("scrollseg-*.whl"), key=lambda p: p.stat().st_mtime)
        if with_dependencies:
            requirements = runtime_requirements(own)
            if python_version or platform:
                target = ["--only-binary=:all:"] + (["--python-version", python_version] if python_version else []) + (["--platform", platform] if platform else [])
                subprocess.run(pip + ["download", "--quiet", "--dest", str(out), *target, *requirements], check=True)
            else:
                subprocess.run(pip + ["wheel", "--quiet", "--wheel-dir", str(out), *requirements], check=True)
    except subprocess.CalledProcessError as exc:
        raise ScrollsegError(f"{out}: building the wheelhouse failed (pip exit code {exc.returncode}); see pip's message above") from exc
    return sorted(out.glob("*.whl"))
