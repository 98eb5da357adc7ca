"""Parallel self-distillation (recipe `cpsd`, fastmlic/recipes/cpsd.py) from one command:

    python -m fastmlic.psd --cfg psd_digits                    # partition -> 2K teachers -> student
    python -m fastmlic.psd --cfg psd_mscoco --status           # what is done, what is left

Runs the preset's stages with `fastmlic.pipeline`: `partition` writes the CGP and DGP class partitions,
`cgp0`..`cgp{K-1}` and `dgp0`..`dgp{K-1}` train one `standard` teacher on each part's classes, and
`student` trains the full-class model from all of them. Each is an ordinary run folder under
runs/<preset>/; the same command again skips what is finished and resumes what was interrupted.
Teachers are independent: start them at the same time on separate GPUs or nodes, then the student:

    python -m fastmlic.psd --cfg psd_mscoco --stage partition
    CUDA_VISIBLE_DEVICES=0 python -m fastmlic.psd --cfg psd_mscoco --stage cgp0 &
    CUDA_VISIBLE_DEVICES=1 python -m fastmlic.psd --cfg psd_mscoco --stage cgp1 &    # ... dgp4
    python -m fastmlic.psd --cfg psd_mscoco --stage student

(a shared filesystem holds runs/<preset>/ for teachers on other nodes; `torchrun ... -m fastmlic.psd`
runs each stage on all its processes).
"""

import sys

from .pipeline import main

if __name__ == "__main__":
    from .cli import exit_on_user_error

    sys.exit(exit_on_user_error(lambda: main(prog="python -m fastmlic.psd", doc=__doc__)))
