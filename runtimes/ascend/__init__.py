"""MindSpore runtimes (CPU, GPU, Ascend): pretraining, fine-tuning, evaluation and reconstruction
(`runtimes/ascend/train.py` or `maeconv train`; recipes in `configs/`), and MindIR export of the
MindSpore twin for Ascend serving, with its runner."""
