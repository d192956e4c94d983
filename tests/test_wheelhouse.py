"""The offline install: the wheelhouse holds every dependency scrollseg's metadata declares
(torch excepted), and a fresh venv installs it with no index and predicts."""
import importlib.metadata
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from scrollseg.checkpoint import atomic_save
from scrollseg.config import build_config
from scrollseg.data.io import read_volume
from scrollseg.models import build_model
from scrollseg.wheelhouse import project_root, requirement_name, runtime_requirements


def test_the_dependency_list_is_the_packages_metadata(tmp_path):
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", tmp_path, project_root()], check=True, timeout=300)
    wheel = next(tmp_path.glob("scrollseg-*.whl"))
    declared = tomllib.loads((project_root() / "pyproject.toml").read_text())["project"]["dependencies"]
    assert sorted(runtime_requirements(wheel)) == sorted(r for r in declared if requirement_name(r) != "torch")
    assert {"numba", "nvidia-ml-py", "imagecodecs"} <= {requirement_name(r) for r in runtime_requirements(wheel)}


def provide(name: str, folder: Path, seen: set) -> None:
    """Link an installed distribution and, recursively, what it requires into ``folder``."""
    key = requirement_name(name)
    if key in seen:
        return
    seen.add(key)
    dist = importlib.metadata.distribution(name)
    for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
        target = Path(dist.locate_file(top))
        if target.exists() and not (folder / top).exists():
            (folder / top).symlink_to(target)
    for raw in dist.requires or []:
        req = Requirement(raw)
        if req.marker is None or req.marker.evaluate({**default_environment(), "extra": ""}):
            provide(req.name, folder, seen)


@pytest.mark.offline_install
def test_a_fresh_venv_installs_the_wheelhouse_without_an_index_and_predicts(small_dataset, tmp_path):
    house, venv, provided = tmp_path / "wheels", tmp_path / "venv", tmp_path / "torch"
    proc = subprocess.run([sys.executable, "-m", "scrollseg", "wheelhouse", house], capture_output=True, text=True, timeout=600)
    if proc.returncode and "No matching distribution" in proc.stderr + proc.stdout:
        pytest.skip("no package index reachable to build the wheelhouse from")
    assert proc.returncode == 0, proc.stderr
    names = {requirement_name(p.name.split("-")[0]) for p in house.glob("*.whl")}
    assert {"scrollseg", "numpy", "scipy", "numba", "llvmlite", "nvidia-ml-py", "imagecodecs", "tifffile"} <= names and "torch" not in names

    # torch comes from this machine: a folder of links to it and what it needs, on the venv's path
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    provided.mkdir()
    provide("torch", provided, set())
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "provided_torch.pth").write_text(str(provided) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env["PIP_CONFIG_FILE"] = os.devnull  # no index or find-links from any pip configuration
    # the venv's own setuptools (older than torch asks for) would hide the one provided with torch
    subprocess.run([venv / "bin" / "python", "-m", "pip", "uninstall", "--quiet", "--yes", "setuptools"], check=True, env=env, timeout=120)
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-index", "--find-links", house, "scrollseg"],
                   check=True, env=env, timeout=300)
    where = subprocess.run([venv / "bin" / "python", "-c", "import scrollseg, numba, torch; print(scrollseg.__file__, torch.__file__)"],
                           capture_output=True, text=True, check=True, env=env).stdout.split()
    assert where[0].startswith(str(site)) and where[1].startswith(str(provided))

    cfg = build_config("tiny", ["model.features=[4,8]", "model.encoder_blocks=[1,1]", "inference.tile=[32,32,32]"])
    atomic_save({"model": build_model(cfg.model).state_dict(), "config": cfg.to_dict()}, tmp_path / "model.pt")
    proc = subprocess.run([venv / "bin" / "scrollseg", "predict", tmp_path / "model.pt", small_dataset, "--out", tmp_path / "sub.zip"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(tmp_path / "sub.zip") as zf:
        assert sorted(zf.namelist()) == ["9000.tif", "9001.tif"]
        assert read_volume(zf.read("9000.tif")).shape == read_volume(small_dataset / "test_images" / "9000.tif").shape
