"""How fast the toy world makes images: the issue asks for 10,000 images of 64 px in <= 2 minutes on 2 cores.

    .venv/bin/python benchmarks/toyworld_speed.py --num-images 10000 --size 64 --num-proc 2

Times generation alone and generation plus PNG encoding (what a dataset build stores), and prints one JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from multiprocessing import Pool

from datasets_icd.toyworld import ToyWorld, ToyWorldConfig

RATES = {"watermark": 0.5, "qrcode": 0.3, "text": 0.5}


def _generate(job: tuple[ToyWorldConfig, int, int, bool]) -> int:
    config, start, stop, encode = job
    world = ToyWorld(config)
    for i in range(start, stop):
        image = world.sample(i).image
        if encode:
            image.save(io.BytesIO(), format="PNG")
    return stop - start


def measure(config: ToyWorldConfig, num_images: int, num_proc: int, encode: bool) -> float:
    step = -(-num_images // num_proc)
    chunks = [(config, s, min(s + step, num_images), encode) for s in range(0, num_images, step)]
    start = time.perf_counter()
    with Pool(num_proc) as pool:
        assert sum(pool.map(_generate, chunks)) == num_images
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--num-proc", type=int, default=2)
    args = parser.parse_args()
    config = ToyWorldConfig(size=args.size, concept_rates=RATES)
    result = {"num_images": args.num_images, "size": args.size, "num_proc": args.num_proc}
    for label, encode in (("generate_s", False), ("generate_and_png_s", True)):
        result[label] = round(measure(config, args.num_images, args.num_proc, encode), 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
