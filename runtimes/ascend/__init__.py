"""MindSpore runtimes: MindIR export of the MindSpore twin for Ascend serving, and its runner."""
