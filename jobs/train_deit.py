"""Train a DeiT image classifier (Touvron et al. 2021), with or without a teacher, with Ray Train, into MLflow.

python jobs/train_deit.py                      # default preset: the built-in demo set, a few minutes on a CPU
python jobs/train_deit.py --preset smoke       # about a minute
python jobs/train_deit.py --preset distill     # DeiT-Tiny with hard distillation from models:/demo-teacher@champion
python jobs/train_deit.py distill.type=soft distill.tau=3 distill.alpha=0.5 distill.teacher=models:/my-cnn/4
python jobs/train_deit.py distill.type=hard distill.teacher=regnety_160 distill.teacher_checkpoint=regnety.pth
python jobs/train_deit.py data.path=/data/prepared model.name=deit_micro_distilled_patch4_32 scaling.num_workers=2
python jobs/train_deit.py --help               # every config field with its default
"""

import sys
from pathlib import Path

from fovea.train.trainer import job_main

if __name__ == "__main__":
    sys.exit(job_main("train_deit", Path(__file__).parent / "configs" / "deit", __doc__.splitlines()[0]))
