"""Write a DND sRGB benchmark submission with a configured denoiser.

    python tools/dnd_submission.py --dnd /data/DND --out results/dnd \
        --train_config configs/virnet_denoise_real_train.json --test_config configs/virnet_denoise_real_test.json \
        --set model.pretrained=model_zoo/virnet_denoising_real.pth

Upload the files in `<out>/bundled/` to the DND website. `test_dataset.self_ensemble` (true in the
VIRNet real-noise test config) averages the 8 flips/rotations, as VIRNet's published DND results do.
A rerun skips the images already bundled.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dnd", required=True, help="DND folder with info.mat and images_srgb/")
    parser.add_argument("--out", required=True, help="output folder (bundles go to <out>/bundled/)")
    parser.add_argument("--train_config", default="configs/virnet_denoise_real_train.json")
    parser.add_argument("--test_config", default="configs/virnet_denoise_real_test.json")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    from deblurring import run_reporting_errors
    from engine.dnd import dnd_submission
    from utils.config import load_config

    def submit() -> int:
        written = dnd_submission(load_config(args.train_config, args.test_config, args.overrides), args.dnd, args.out)
        print(f"wrote {len(written)} bundle(s) to {os.path.join(args.out, 'bundled')}")
        return 0
    return run_reporting_errors(submit)


if __name__ == "__main__":
    sys.exit(main())
