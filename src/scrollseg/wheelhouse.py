"""Build a folder of wheels that installs scrollseg offline (Kaggle inference notebooks
have no internet). torch is left out: Kaggle's images already carry a CUDA build."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from .errors import ScrollsegError

RUNTIME_DEPENDENCIES = ["numpy", "scipy", "tifffile", "imagecodecs", "connected-components-3d", "pyyaml", "tqdm"]


def project_root() -> Path:
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ScrollsegError("this command needs a source checkout of scrollseg; run it from a clone (pip install -e .)")
    return root


def build_wheelhouse(out: Path | str, with_dependencies: bool = True, python_version: str | None = None, platform: str | None = None) -> list[Path]:
    """Wheels of scrollseg and (optionally) its non-torch dependencies in ``out``.

    ``python_version``/``platform`` (e.g. ``3.11`` / ``manylinux2014_x86_64``) fetch the
    dependencies' binary wheels for another machine, such as Kaggle's image.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    try:
        subprocess.run(pip + ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(project_root())], check=True)
        if with_dependencies:
            if python_version or platform:
                target = ["--only-binary=:all:"] + (["--python-version", python_version] if python_version else []) + (["--platform", platform] if platform else [])
                subprocess.run(pip + ["download", "--quiet", "--dest", str(out), *target, *RUNTIME_DEPENDENCIES], check=True)
            else:
                subprocess.run(pip + ["wheel", "--quiet", "--wheel-dir", str(out), *RUNTIME_DEPENDENCIES], check=True)
    except subprocess.CalledProcessError as exc:
        raise ScrollsegError(f"{out}: building the wheelhouse failed (pip exit code {exc.returncode}); see pip's message above") from exc
    return sorted(out.glob("*.whl"))
