r"""Predict with a registered fovea model over a folder, a file list or a prepared dataset, on Ray Data.

Writes a Parquet file (path, label, probability, top-k classes and probabilities; true_label for a prepared split),
lists the files that do not read or decode (OUT.skipped.csv), prints a progress line and a summary (files/s).

python jobs/predict.py --model models:/vit_micro_convstem_32@champion --data photos/ --out predictions.parquet
python jobs/predict.py --model models:/my-vit/3 --data files.txt --out p.parquet --top-k 3   # one path per line
python jobs/predict.py --model models:/my-vit@champion --data /data/prepared --split val --out val.parquet
python jobs/predict.py --model models:/my-mvit@champion --data clips/ --out p.parquet --concurrency 2 --use-gpu
ray job submit --working-dir . -- python jobs/predict.py --model ... --data /shared/photos --out /shared/p.parquet
"""

import sys

from fovea.predict.batch import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
