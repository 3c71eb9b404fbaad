"""Train a ViViT (Arnab et al. 2021) video classifier with Ray Train; the run and model land in MLflow.

python jobs/train_vivit.py                      # default preset: the built-in demo video set on a CPU
python jobs/train_vivit.py --preset smoke       # the whole path in about two minutes
python jobs/train_vivit.py model.name=vivit_micro_fsa        # Models 1-4: _joint, _fe, _fsa, _fdp
python jobs/train_vivit.py data.path=/data/k400-prepared model.name=vivit_b16x2_fe model.img_size=224 \
    data.num_frames=32 data.frame_interval=2 model.checkpoint=vit_base_21k.pth scaling.use_gpu=true
python jobs/train_vivit.py --help               # every config field with its default
"""

import sys
from pathlib import Path

from fovea.train.trainer import job_main

if __name__ == "__main__":
    sys.exit(job_main("train_vivit", Path(__file__).parent / "configs" / "vivit", __doc__.splitlines()[0]))
