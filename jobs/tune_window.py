"""Search Swin's attention window size and patch size with Ray Tune; windows that do not fit are skipped.

python jobs/tune_window.py --preset smoke      # 3 trials (one skipped), ASHA, a few minutes on 2 CPU cores
python jobs/tune_window.py                     # the window x patch grid over the demo set
python jobs/tune_window.py tune.space.model.window_size='grid(2, 4, 7)' tune.space.model.kwargs.patch_size=null
python jobs/tune_window.py tune.scheduler=fifo tune.name=windows   # rerun the same command to resume it
python jobs/tune_window.py --help              # every config field (tune.* included) with its default
"""

import sys
from pathlib import Path

from fovea.tune.driver import sweep_main

if __name__ == "__main__":
    sys.exit(sweep_main("tune_window", Path(__file__).parent / "configs" / "tune_window", __doc__.splitlines()[0]))
