"""`maeconv train` (and runtimes/ascend/train.py): the MindSpore trainer, with the flags of
MindFormers' run scripts as aliases of config keys, and msrun for several workers."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import MaeconvError
from .base import cli, run


def _card_option(name: str, **kwargs):
    """One of the flags of MindFormers' run scripts, as the model card writes it (and with hyphens)."""
    return click.option(f"--{name}", f"--{name.replace('_', '-')}", name, default=None, **kwargs)


@cli.command(context_settings={"ignore_unknown_options": True},
             epilog="Any config key can be overridden by its dotted path after the options: --train.epochs 2, "
                    "--data.path DIR, --checkpoint.resume null (values are YAML).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML recipe (see runtimes/ascend/configs/).")
@click.option("--run_mode", "--run-mode", type=click.Choice(["train", "finetune", "eval", "predict"]),
              help="Default: the config's run_mode.")
@click.option("--make_synthetic", "--make-synthetic", "make_synthetic", type=click.Path(path_type=Path),
              help="Write a small synthetic ImageNet-layout dataset to this folder and exit.")
@_card_option("train_dataset_dir", help="Training images: the dataset root or its train split folder.")
@_card_option("eval_dataset_dir", help="Evaluation images: the dataset root or its val split folder.")
@_card_option("predict_data", help="predict: an image, a URL, or a folder of images.")
@_card_option("load_checkpoint", help="The checkpoint to start from (train, finetune) or to run (eval, predict).")
@_card_option("device_id", type=click.IntRange(0))
@_card_option("device_target", type=click.Choice(["CPU", "GPU", "Ascend"]))
@_card_option("use_parallel", type=click.BOOL, help="True: refuse to run unless started as one of several workers.")
@_card_option("output_dir", help="Where the run writes (checkpoints, logs, pictures).")
@click.option("--workers", type=click.IntRange(1), help="Start this many data-parallel workers here (msrun, joined).")
@click.option("--nodes", type=click.IntRange(1), default=1, show_default=True, help="With --workers: machines.")
@click.option("--node_rank", "--node-rank", type=click.IntRange(0), default=0, show_default=True)
@click.option("--master_addr", "--master-addr", default="127.0.0.1", show_default=True)
@click.option("--master_port", "--master-port", type=click.IntRange(1, 65535), default=8118, show_default=True)
@click.option("--log_dir", "--log-dir", default="msrun_log", show_default=True, help="With --workers: worker logs.")
@click.argument("overrides", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def train(ctx, config_path, run_mode, make_synthetic, predict_data, workers, nodes, node_rank, master_addr,
          master_port, log_dir, overrides, **card):
    """MindSpore pretraining, fine-tuning, evaluation and reconstruction pictures."""
    from ..runtimes.ascend.api import card_overrides, predict_inputs
    from ..runtimes.ascend.config import ConfigError, load_config, merge_trees, parse_overrides

    if make_synthetic:
        from ..runtimes.ascend.data import make_synthetic_imagenet

        click.echo(f"wrote a synthetic ImageNet-layout dataset to {make_synthetic_imagenet(make_synthetic)}")
        return
    if config_path is None:
        raise click.UsageError("--config is required")
    try:
        tree = merge_trees(card_overrides(**card), parse_overrides(list(overrides)))
        cfg = load_config(config_path, merge_trees(tree, {"run_mode": run_mode} if run_mode else {}))
        if workers:  # the workers read the same arguments; the config is only checked here
            from ..runtimes.ascend.launch import Cluster, launch

            arguments = ["--config", str(config_path), *(["--run_mode", run_mode] if run_mode else []),
                         *(["--predict_data", str(predict_data)] if predict_data else []),
                         *(f"--{name}={value}" for name, value in card.items() if value is not None), *overrides]
            ctx.exit(launch(Cluster(workers, nodes, node_rank, master_addr, master_port, log_dir), arguments))
        from ..runtimes.ascend.trainer import run_config

        run_config(cfg, predict_inputs(predict_data) if predict_data else None)
    except (ConfigError, FileNotFoundError) as error:
        raise MaeconvError(str(error)) from None


def train_main() -> None:
    """runtimes/ascend/train.py: the train command alone."""
    run(train, "train.py")
