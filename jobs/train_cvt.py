"""Train a CvT (Wu et al. 2021) image classifier with Ray Train; the run and model land in MLflow.

python jobs/train_cvt.py                      # default preset: the built-in demo set, a few minutes on a CPU
python jobs/train_cvt.py --preset smoke       # about a minute
python jobs/train_cvt.py data.path=/data/prepared model.name=cvt_13_224 model.img_size=224 scaling.num_workers=2
python jobs/train_cvt.py --help               # every config field with its default
"""

import sys
from pathlib import Path

from fovea.train.trainer import job_main

if __name__ == "__main__":
    sys.exit(job_main("train_cvt", Path(__file__).parent / "configs" / "cvt", __doc__.splitlines()[0]))
