import subprocess
import sys


def test_wheelhouse_installs_offline(tmp_path):
    house, target = tmp_path / "wheels", tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "scrollseg", "wheelhouse", house, "--no-deps"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheels = list(house.glob("scrollseg-*.whl"))
    assert len(wheels) == 1
    # the notebook's install: no index, only the wheelhouse
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--find-links", house, "--no-deps", "--target", target, "scrollseg"], check=True, timeout=300)
    assert (target / "scrollseg" / "configs" / "tiny.yaml").is_file()
    assert (target / "scrollseg" / "metrics" / "surfel_areas.py").is_file()
