"""Train a DeiT image classifier (Touvron et al. 2021; distillation-token variants too) with Ray Train, into MLflow.

python jobs/train_deit.py                      # default preset: the built-in demo set, a few minutes on a CPU
python jobs/train_deit.py --preset smoke       # about a minute
python jobs/train_deit.py data.path=/data/prepared model.name=deit_micro_distilled_patch4_32 scaling.num_workers=2
python jobs/train_deit.py --help               # every config field with its default
"""

import sys
from pathlib import Path

from fovea.train.trainer import job_main

if __name__ == "__main__":
    sys.exit(job_main("train_deit", Path(__file__).parent / "configs" / "deit", __doc__.splitlines()[0]))
