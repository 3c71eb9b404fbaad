"""Train a TimeSformer (Bertasius et al. 2021) video classifier with Ray Train; the run and model land in MLflow.

python jobs/train_timesformer.py                      # default preset: the built-in demo video set on a CPU
python jobs/train_timesformer.py --preset smoke       # the whole path in about two minutes
python jobs/train_timesformer.py model.name=timesformer_micro_joint   # _divided, _joint, _space
python jobs/train_timesformer.py data.path=/data/k400-prepared model.name=timesformer_base_8x224_divided \
    model.img_size=224 data.num_frames=8 data.frame_interval=32 model.checkpoint=vit_base.pth scaling.use_gpu=true
python jobs/train_timesformer.py --help               # every config field with its default
"""

import sys
from pathlib import Path

from fovea.train.trainer import job_main

if __name__ == "__main__":
    sys.exit(job_main("train_timesformer", Path(__file__).parent / "configs" / "timesformer", __doc__.splitlines()[0]))
