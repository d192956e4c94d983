#!/usr/bin/env bash
# Create .venv-peers: the tools `scrollseg bench` compares against (nnU-Net v2's data loader
# and augmentation, MONAI), beside the project's .venv and sharing its torch, numpy and
# scrollseg through a .pth file, so that both sides of a comparison run the same torch.
# nnunetv2 and dynamic-network-architectures declare timm -> torchvision, which would pull
# a CUDA torch: they are installed without dependencies, plus the few the loader imports.
set -euo pipefail
cd "$(dirname "$0")/.."
PROJECT_PYTHON=${PROJECT_PYTHON:-.venv/bin/python}
PEERS=${PEERS:-.venv-peers}
NNUNET_VERSION=${NNUNET_VERSION:-2.8.1}
MONAI_VERSION=${MONAI_VERSION:-1.6.1}

if [ ! -x "$PROJECT_PYTHON" ]; then
  echo "no project venv at $PROJECT_PYTHON: run ./scripts/bootstrap.sh first (or set PROJECT_PYTHON)" >&2
  exit 1
fi
torch_before=$("$PROJECT_PYTHON" -c "import torch; print(torch.__version__)")
if [ ! -x "$PEERS/bin/python" ]; then
  base=$("$PROJECT_PYTHON" -c "import sys; print(sys._base_executable)")
  "$base" -m venv "$PEERS"
  project_site=$("$PROJECT_PYTHON" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  peer_site=$("$PEERS/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # addsitedir (not a bare path) so the project venv's own .pth files, scrollseg's editable
  # install among them, are read too; the peers' packages come first on sys.path
  echo "import site; site.addsitedir('$(cd "$project_site" && pwd)')" > "$peer_site/_project_venv.pth"
fi
PIP="$PEERS/bin/python -m pip"
$PIP install --quiet "monai==${MONAI_VERSION}"
$PIP install --quiet --no-deps "nnunetv2==${NNUNET_VERSION}" "dynamic-network-architectures>=0.4.4,<0.5"
# what nnunetv2's data loader and nnUNetTrainer (for get_training_transforms) import; pip then
# lists nnunetv2's other declared dependencies (einops, graphviz, requests, yacs) as missing:
# the benchmark does not use them
$PIP install --quiet "batchgeneratorsv2>=0.3.2" "acvl-utils>=0.2.6,<0.3" "blosc2>=3.3.2" nibabel seaborn

torch_after=$("$PEERS/bin/python" -c "import torch; print(torch.__version__)")
if [ "$torch_after" != "$torch_before" ]; then
  echo "the peers venv imports torch $torch_after, the project venv $torch_before: remove $PEERS and retry" >&2
  exit 1
fi
"$PEERS/bin/python" -W ignore -c "import monai, nnunetv2.training.dataloading.data_loader, nnunetv2.training.nnUNetTrainer.nnUNetTrainer"
echo "$PEERS ready: torch $torch_after, monai $MONAI_VERSION, nnunetv2 $NNUNET_VERSION"
