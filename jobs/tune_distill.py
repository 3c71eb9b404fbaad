"""Search DeiT distillation's temperature τ, weight λ and soft/hard mode with Ray Tune, every trial in MLflow.

python jobs/tune_distill.py --preset smoke     # 4 trials, ASHA, a few minutes on 2 CPU cores
python jobs/tune_distill.py                    # 12 trials over the demo set
python jobs/tune_distill.py tune.search=optuna tune.num_samples=20 distill.teacher=models:/my-cnn@champion
python jobs/tune_distill.py tune.space.optim.lr='loguniform(1e-4, 3e-3)'   # search one more field
python jobs/tune_distill.py tune.name=my-sweep # rerun the same command to resume an interrupted sweep
python jobs/tune_distill.py --help             # every config field (tune.* included) with its default
"""

import sys
from pathlib import Path

from fovea.tune.driver import sweep_main

CONFIGS = Path(__file__).parent / "configs"

if __name__ == "__main__":
    sys.exit(
        sweep_main("tune_distill", CONFIGS / "tune_distill", __doc__.splitlines()[0], teacher_presets=CONFIGS / "vit")
    )
