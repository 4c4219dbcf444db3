"""MAE pretraining, fine-tuning, evaluation and reconstruction with MindSpore (CPU, GPU, Ascend).

`runtimes/ascend/train.py` (or `maeconv train`) is the entry point; `configs/` holds the recipes.
"""
