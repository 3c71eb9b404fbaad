"""Train a Swin Transformer (Liu et al. 2021) image classifier with Ray Train; the run and model land in MLflow.

python jobs/train_swin.py                      # default preset: the built-in demo set, a few minutes on a CPU
python jobs/train_swin.py --preset smoke       # about a minute
python jobs/train_swin.py data.path=/data/prepared model.name=swin_micro_patch2_window4_32 scaling.num_workers=2
python jobs/train_swin.py --help               # every config field with its default
"""

import sys
from pathlib import Path

from fovea.train.trainer import job_main

if __name__ == "__main__":
    sys.exit(job_main("train_swin", Path(__file__).parent / "configs" / "swin", __doc__.splitlines()[0]))
