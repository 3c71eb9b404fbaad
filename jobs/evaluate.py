r"""Evaluate a trained classifier on a prepared dataset's split and record the scores in a new MLflow run.

Single- and multi-view top-1/top-5, loss, per-class accuracy and a confusion matrix; the run is linked to the
registered model version it scored.

python jobs/evaluate.py eval.model=models:/vit_micro_convstem_32@champion       # the demo set, after train_vit
python jobs/evaluate.py eval.model=models:/my-vit/3 data.path=/data/prepared eval.split=test
python jobs/evaluate.py eval.model=~/.cache/fovea/runs/my-run data.path=/data/prepared   # a training checkpoint
python jobs/evaluate.py eval.model=models:/my-vit@champion data.num_spatial_crops=3 eval.flip_views=true
python jobs/evaluate.py eval.model=models:/my-mvit@champion data.path=/data/k400-prepared data.num_temporal_clips=4 \
    data.num_spatial_crops=3                    # ViViT's 4x3 multi-view test
python jobs/evaluate.py --help                 # every config field with its default
"""

import sys
from pathlib import Path

from fovea.evaluate.job import evaluation_main

if __name__ == "__main__":
    sys.exit(evaluation_main(Path(__file__).parent / "configs" / "evaluate", __doc__.splitlines()[0]))
