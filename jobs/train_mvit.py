"""Train an MViT (Fan et al. 2021) video classifier with Ray Train; the run and model land in MLflow.

python jobs/train_mvit.py                      # default preset: the built-in demo video set on a CPU
python jobs/train_mvit.py --preset smoke       # the whole path in about two minutes
ray job submit --working-dir . -- python jobs/train_mvit.py --preset smoke
python jobs/train_mvit.py data.path=/data/k400-prepared model.name=mvit_base_16x4 model.img_size=224 \
    data.num_frames=16 data.frame_interval=4 scaling.num_workers=8 scaling.use_gpu=true
python jobs/train_mvit.py --help               # every config field with its default
"""

import sys
from pathlib import Path

from fovea.train.trainer import job_main

if __name__ == "__main__":
    sys.exit(job_main("train_mvit", Path(__file__).parent / "configs" / "mvit", __doc__.splitlines()[0]))
