"""MAE with MindSpore: pretraining, fine-tuning, evaluation, reconstruction pictures; the same
command as `maeconv train`.

    python runtimes/ascend/train.py --config runtimes/ascend/configs/mae_vit_tiny_patch8_synthetic.yaml --run_mode train
    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=msrun_log --join=True \\
        runtimes/ascend/train.py --config CONFIG.yaml --run_mode train

Config keys are overridden on the command line: --train.epochs 2 (see --help).
"""
import os
import sys

# Run as a file, this folder would come first on sys.path and its modules (config, data, ...)
# would shadow same-named top-level modules; the library is imported from the maeconv package.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]

from maeconv.cli import train_main  # noqa: E402

if __name__ == "__main__":
    train_main()
