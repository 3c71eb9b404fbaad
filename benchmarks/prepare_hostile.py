"""Preparation on hostile files: wall time and peak memory of ``pipelines/prepare_images.py`` over a folder holding a
looping EPS named ``.jpg``, a 2 GiB sparse ``.jpg`` and a 169-megapixel PNG (under Pillow's bomb limit), beside a
few ordinary images (issue 21: "finishes in under a minute on this machine with peak RSS under 1.5 GB").

    python benchmarks/prepare_hostile.py [--keep DIR]

Peak memory is the largest sum, over samples every 0.1 s, of the proportional set size (PSS) of the script's whole
process tree (the driver, Ray's raylet and GCS, and every Ray worker): what the machine really holds, shared library
pages counted once. The largest single process's RSS is printed beside it. ``--plain`` leaves the hostile files out,
for the baseline.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LOOPING_EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n{ } loop\nshowpage\n"


def write_corpus(root: Path, *, hostile: bool = True) -> None:
    for cls in ("ant", "bee"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            pixels = np.random.default_rng(i + (cls == "bee") * 10).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    if not hostile:
        return
    (root / "ant" / "looping.jpg").write_bytes(LOOPING_EPS)
    with open(root / "bee" / "sparse.jpg", "wb") as file:
        file.write(b"\xff\xd8\xff\xe0")
        file.truncate(2 << 30)
    side = 13_000  # 169 Mpx
    Image.MAX_IMAGE_PIXELS = None  # only to write it here
    gradient = np.tile(np.linspace(0, 255, side, dtype=np.uint8), (side, 1))
    buffer = io.BytesIO()
    Image.fromarray(gradient).convert("RGB").save(buffer, format="PNG", compress_level=1)
    (root / "ant" / "huge.png").write_bytes(buffer.getvalue())


def tree_memory(process: psutil.Process) -> tuple[int, int]:
    """``(PSS summed over the tree, the largest single process's RSS)``: PSS shares each shared page (torch's and
    Ray's libraries, mapped by every worker) among the processes mapping it, so the sum is what the tree holds."""
    total = largest = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_full_info().pss
            largest = max(largest, member.memory_info().rss)
        except psutil.Error:
            pass
    return total, largest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the corpus here and keep it (default: a temporary folder)")
    parser.add_argument("--plain", action="store_true", help="only the ordinary images (the baseline)")
    args = parser.parse_args()
    base = args.keep or Path(tempfile.mkdtemp(prefix="fovea-hostile-"))
    src, out = base / "raw", base / "prepared"
    write_corpus(src, hostile=not args.plain)
    command = [sys.executable, str(ROOT / "pipelines" / "prepare_images.py"), str(src), str(out), "--num-cpus", "2"]
    started = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak, stop = psutil.Process(child.pid), [0, 0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            total, largest = tree_memory(watched)
            peak[0], peak[1] = max(peak[0], total), max(peak[1], largest)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = child.communicate(timeout=600)
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    print("\n".join([line for line in output.splitlines() if not line.startswith("(")][-8:]))
    print(
        f"exit {child.returncode}; wall {wall:.1f} s; peak memory of the process tree {peak[0] / 2**30:.2f} GiB (PSS), "
        f"largest process {peak[1] / 2**30:.2f} GiB (RSS)"
    )
    return child.returncode


if __name__ == "__main__":
    sys.exit(main())
