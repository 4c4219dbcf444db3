"""Training with MindSpore against torch.optim.AdamW on the torch twin, and the optimizer pieces."""
import math

import numpy as np
import pytest
import torch

from helpers import TINY, TINY_CLS, seeded_state
from maeconv.convert.twins import create_model, load_state, model_state
from maeconv.models import CLASSIFY, PRETRAIN, get_config
from maeconv.parity.compare import REL, Tolerance, compare
from maeconv.convert.twins import MINDSPORE, get_twin
from maeconv.parity.twins import parity_inputs
from maeconv.runtimes.ascend.optim import NO_WEIGHT_DECAY, layer_id, learning_rate, parameter_groups

STEPS = 5
TOLERANCE = Tolerance(REL, 1e-4)


def schedule(step: int) -> float:
    # 5 steps over 2 "epochs" of 2.5 steps, warm-up 1 epoch: warm-up and cosine both exercised
    return learning_rate(step / 2.5, 1e-3, 1e-5, 1.0, 2.0)


def batches(config, task):
    for step in range(STEPS):
        images, noise = parity_inputs(config, batch=4, seed=100 + step)
        if task == PRETRAIN:
            yield images, noise
        else:
            targets = np.random.default_rng(step).dirichlet(np.ones(config.num_classes), 4).astype(np.float32)
            yield images, targets


def groups_for(named_shapes, task, depth):
    if task == PRETRAIN:
        return parameter_groups(named_shapes, 0.05)
    return parameter_groups(named_shapes, 0.05, layer_decay=0.75, depth=depth, no_weight_decay=NO_WEIGHT_DECAY)


def train_torch(state, config, task):
    model = create_model(config, task, "torch")
    load_state(model, state, "torch")
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = groups_for([(n, tuple(p.shape)) for n, p in named], task, config.depth)
    optimizer = torch.optim.AdamW(
        [{"params": [p], "weight_decay": g.weight_decay, "scale": g.lr_scale} for (_, p), g in zip(named, groups)],
        lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    for step, (images, aux) in enumerate(batches(config, task)):
        for group in optimizer.param_groups:
            group["lr"] = schedule(step) * group["scale"]
        optimizer.zero_grad()
        if task == PRETRAIN:
            loss = model(torch.from_numpy(images), None, torch.from_numpy(aux))[0]
        else:
            logits = model(torch.from_numpy(images))
            loss = -(torch.from_numpy(aux) * torch.log_softmax(logits, -1)).sum(-1).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return np.array(losses), model_state(model, "torch")


def train_mindspore(state, config, task):
    import mindspore as ms

    from maeconv.runtimes.ascend.optim import AdamW
    from maeconv.runtimes.ascend.steps import ClassifierLoss, PretrainLoss, TrainStep

    get_twin(MINDSPORE).set_mode("graph")
    model = create_model(config, task, "mindspore")
    load_state(model, state, "mindspore")
    model.set_train(True)
    params = model.trainable_params()
    names = {id(p): n for n, p in model.parameters_and_names()}
    groups = groups_for([(names[id(p)], tuple(p.shape)) for p in params], task, config.depth)
    step_fn = TrainStep(PretrainLoss(model) if task == PRETRAIN else ClassifierLoss(model),
                        AdamW(params, groups, (0.9, 0.95), 1e-8))
    losses = [float(step_fn(ms.Tensor(images), ms.Tensor(aux), ms.Tensor(np.float32(schedule(step)))).asnumpy())
              for step, (images, aux) in enumerate(batches(config, task))]
    return np.array(losses), model_state(model, "mindspore")


def key_bias(qkv_bias):
    return np.split(qkv_bias, 3)[1]


def without_key_bias(state):
    """qkv.bias replaced by its query and value thirds."""
    out = {}
    for name, value in state.items():
        if name.endswith("attn.qkv.bias"):
            q, _, v = np.split(value, 3)
            out[name + "[q]"], out[name + "[v]"] = q, v
        else:
            out[name] = value
    return out


@pytest.mark.parametrize("preset,task,overrides", [
    (TINY, PRETRAIN, {"norm_pix_loss": True}),
    (TINY_CLS, CLASSIFY, {}),  # layer-wise lr decay and the fine-tuning decay groups
])
@pytest.mark.slow
def test_training_parity_with_torch_adamw(preset, task, overrides):
    config = get_config(preset, **overrides)
    state = seeded_state(preset)
    torch_losses, torch_state = train_torch(state, config, task)
    ms_losses, ms_state = train_mindspore(state, config, task)
    per_step = {f"loss step {i + 1}": ms_losses[i] for i in range(STEPS)}
    expected = {f"loss step {i + 1}": torch_losses[i] for i in range(STEPS)}
    rows = compare("mindspore vs torch", per_step, expected, dict.fromkeys(per_step, TOLERANCE))
    ms_weights, torch_weights = without_key_bias(ms_state), without_key_bias(torch_state)
    rows += compare("mindspore vs torch", ms_weights, torch_weights, dict.fromkeys(torch_weights, TOLERANCE))
    # The key bias has an exactly zero gradient (softmax ignores a shift shared by all keys), so
    # AdamW's normalised update of it is rounding noise in either framework; only its bound holds.
    bound = sum(schedule(step) for step in range(STEPS)) * 1.01
    for name in (k for k in state if k.endswith("attn.qkv.bias")):
        for trained in (ms_state, torch_state):
            assert np.abs(key_bias(trained[name]) - key_bias(state[name])).max() <= bound
    failed = [r for r in rows if not r.passed]
    assert not failed, [(r.output, r.max_rel) for r in failed]
    # the weights really moved, so the comparison means something
    moved = max(np.abs(torch_state[k] - state[k]).max() for k in torch_state)
    assert moved > 1e-3
    assert torch_losses[-1] != torch_losses[0]
    print("\n".join(f"{r.output}: rel {r.max_rel:.2e}" for r in rows[:STEPS]))
    print(f"weights: max rel {max(r.max_rel for r in rows[STEPS:]):.2e}")


def test_weight_decay_groups_and_layer_ids():
    config = get_config(TINY_CLS)
    shapes = [(n, s) for n, s in __import__("maeconv.models.config", fromlist=["x"]).classifier_shapes(config)]
    groups = {g.name: g for g in parameter_groups(shapes, 0.05, 0.75, config.depth, NO_WEIGHT_DECAY)}
    assert groups["blocks.0.attn.qkv.weight"].weight_decay == 0.05
    assert groups["blocks.0.attn.qkv.bias"].weight_decay == 0.0
    assert groups["fc_norm.weight"].weight_decay == 0.0
    assert groups["cls_token"].weight_decay == 0.0 and groups["pos_embed"].weight_decay == 0.0
    depth = config.depth
    assert layer_id("patch_embed.proj.weight", depth) == 0
    assert layer_id("blocks.1.mlp.fc1.weight", depth) == 2
    assert layer_id("head.weight", depth) == depth + 1
    assert groups["patch_embed.proj.weight"].lr_scale == pytest.approx(0.75 ** (depth + 1))
    assert groups["blocks.0.norm1.weight"].lr_scale == pytest.approx(0.75 ** depth)
    assert groups["head.weight"].lr_scale == 1.0
    # pretraining: decay on tokens (3-D), none on 1-D tensors
    pre = {g.name: g for g in parameter_groups([("cls_token", (1, 1, 8)), ("norm.weight", (8,))], 0.05)}
    assert pre["cls_token"].weight_decay == 0.05 and pre["norm.weight"].weight_decay == 0.0


def test_learning_rate_schedule():
    assert learning_rate(0.0, 1.0, 0.0, 4, 10) == 0.0
    assert learning_rate(2.0, 1.0, 0.0, 4, 10) == pytest.approx(0.5)
    assert learning_rate(4.0, 1.0, 0.1, 4, 10) == pytest.approx(1.0)
    assert learning_rate(7.0, 1.0, 0.1, 4, 10) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert learning_rate(10.0, 1.0, 0.1, 4, 10) == pytest.approx(0.1)


def test_shipped_recipes_load_and_match_the_reference():
    from maeconv.runtimes.ascend.config import config_dir, load_config
    from maeconv.runtimes.ascend.optim import scaled_lr

    recipes = {p.name: load_config(p) for p in sorted(config_dir().glob("*.yaml"))}
    assert any("tiny" in name for name in recipes)
    base = recipes["mae_vit_base_patch16_800ep.yaml"]
    effective = base.train.batch_size * 8 * base.train.accum_iter  # on 8 devices
    assert effective == 4096 and base.train.epochs == 800 and base.train.warmup_epochs == 40
    assert scaled_lr(base.train.blr, effective) == pytest.approx(2.4e-3)
    assert base.model.norm_pix_loss and base.train.betas == [0.9, 0.95]
    for size, layer_decay, drop_path, epochs in (("base", 0.65, 0.1, 100), ("large", 0.75, 0.2, 50),
                                                 ("huge", 0.75, 0.3, 50)):
        name = next(n for n in recipes if n.startswith(f"vit_{size}") and "finetune" in n)
        recipe = recipes[name]
        assert (recipe.train.layer_decay, recipe.model.drop_path_rate, recipe.train.epochs) == \
            (layer_decay, drop_path, epochs)
        assert recipe.train.batch_size * 8 * recipe.train.accum_iter == 1024


def test_command_line_overrides():
    from maeconv.runtimes.ascend.config import ConfigError, load_config

    cfg = load_config(None, ["--train.epochs", "2", "--train.lr=2e-3", "--train.clip_grad", "null",
                             "--train.betas", "[0.9, 0.99]", "--model.preset", "mae_vit_tiny_patch8"])
    assert cfg.train.epochs == 2 and cfg.train.lr == 2e-3 and cfg.train.betas == [0.9, 0.99]
    assert cfg.model.preset == "mae_vit_tiny_patch8"
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(None, ["--train.epoch", "2"])


def test_model_img_size_sets_the_trained_image_size():
    from maeconv.runtimes.ascend.config import ConfigError, load_config
    from maeconv.runtimes.ascend.trainer import model_config

    cfg = load_config(None, ["--model.preset", TINY, "--model.img_size", "64"])
    assert model_config(cfg, PRETRAIN).img_size == 64
    assert model_config(load_config(None, ["--model.preset", TINY]), PRETRAIN).img_size == 32
    with pytest.raises(ConfigError, match="image size 60"):
        model_config(load_config(None, ["--model.preset", TINY, "--model.img_size", "60"]), PRETRAIN)


def _tiny_step_setup(state, config):
    from maeconv.runtimes.ascend.optim import AdamW

    model = create_model(config, PRETRAIN, "mindspore")
    load_state(model, state, "mindspore")
    model.set_train(True)
    params = model.trainable_params()
    names = {id(p): n for n, p in model.parameters_and_names()}
    optimizer = AdamW(params, parameter_groups([(names[id(p)], tuple(p.shape)) for p in params], 0.05), (0.9, 0.95))
    return model, optimizer


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["accumulation", "loss_scale"])
def test_accumulation_and_loss_scaling_give_the_plain_step(variant):
    """Two accumulated half batches, or a dynamically scaled loss, update the weights as one plain step."""
    import mindspore as ms

    from maeconv.runtimes.ascend.steps import AccumulateStep, ApplyStep, PretrainLoss, TrainStep, accumulators_for

    get_twin(MINDSPORE).set_mode("graph")
    config = get_config(TINY)
    state = seeded_state(TINY)
    images, noise = parity_inputs(config, batch=4, seed=7)
    lr = ms.Tensor(np.float32(1e-3))
    results = []
    for kind in ("plain", variant):
        model, optimizer = _tiny_step_setup(state, config)
        if kind == "accumulation":
            sums = accumulators_for(optimizer.parameters)
            accumulate = AccumulateStep(PretrainLoss(model), optimizer, sums)
            apply = ApplyStep(optimizer, sums, 2)
        else:
            scaler = ms.amp.DynamicLossScaler(2.0 ** 16, 2, 1000) if kind == "loss_scale" else None
            step = TrainStep(PretrainLoss(model), optimizer, scaler=scaler)
        for _ in range(2):
            if kind == "accumulation":
                halves = [float(accumulate(ms.Tensor(images[i:i + 2]), ms.Tensor(noise[i:i + 2])).asnumpy())
                          for i in (0, 2)]
                apply(lr)
                loss = ms.Tensor(np.float32(np.mean(halves)))
            else:
                loss = step(ms.Tensor(images), ms.Tensor(noise), lr)
        results.append((float(loss.asnumpy()), model_state(model, "mindspore")))
    (plain_loss, plain), (loss, other) = results
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    rows = compare(variant, without_key_bias(other), without_key_bias(plain),
                   dict.fromkeys(without_key_bias(plain), TOLERANCE))
    assert all(r.passed for r in rows), [(r.output, r.max_rel) for r in rows if not r.passed]
    assert max(np.abs(plain[k] - state[k]).max() for k in plain) > 1e-4  # the step did something


@pytest.mark.parametrize("framework", ["torch", "mindspore"])
def test_drop_path_is_stochastic_in_training_only(framework):
    from maeconv.models.config import checkpoint_shapes, drop_path_rates

    config = get_config(TINY_CLS, drop_path_rate=0.5)
    assert drop_path_rates(config) == [0.0, 0.5]  # linear over the blocks, as timm
    state = seeded_state(TINY_CLS)
    images, _ = parity_inputs(config, batch=4, seed=3)
    dropping, plain = create_model(config, CLASSIFY, framework), create_model(get_config(TINY_CLS), CLASSIFY, framework)
    load_state(dropping, state, framework)  # the same names: drop-path holds no parameters
    load_state(plain, state, framework)
    assert set(model_state(dropping, framework)) == set(checkpoint_shapes(config, "classifier"))
    if framework == "torch":
        def run(model, train):
            model.train(train)
            with torch.no_grad():
                return model(torch.from_numpy(images)).numpy()
    else:
        import mindspore as ms

        get_twin(MINDSPORE).set_mode("pynative")

        def run(model, train):
            model.set_train(train)
            return model(ms.Tensor(images)).asnumpy()
    first, second = run(dropping, True), run(dropping, True)
    assert np.abs(first - second).max() > 1e-4
    np.testing.assert_allclose(run(dropping, False), run(plain, False), rtol=0, atol=0)
    get_twin(MINDSPORE).set_mode("graph")


def test_the_eval_transforms_of_predict_and_of_evaluation_agree(tmp_path):
    """`maeconv predict` (PIL) and the trainer's evaluation (mindspore.dataset) preprocess alike:
    within one 8-bit level of each other after normalisation, under a quarter of one on average."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from maeconv.runtimes.ascend import data as data_lib
    from maeconv.runtimes.images import IMAGENET_STD, eval_transform, read_image

    folder = tmp_path / "val" / "class_0"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sizes = [(300, 240), (256, 256), (97, 131), (224, 500)]
    for i, (width, height) in enumerate(sizes):
        pixels = gaussian_filter(rng.random((height, width, 3)), (3, 3, 0)) * 255
        Image.fromarray(pixels.round().astype(np.uint8)).save(folder / f"{i}.png")
    split = data_lib.build_split(tmp_path, "val", data_lib.EVAL, 224, 1, shuffle=False, training=False, workers=1)
    one_level = 1 / 255 / IMAGENET_STD.min() + 1e-6
    batches = list(split.dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))
    assert len(batches) == len(sizes)
    for (images, _), path in zip(batches, sorted(folder.iterdir())):
        difference = np.abs(images[0] - eval_transform(read_image(path), 224))
        assert difference.max() <= one_level and difference.mean() < 0.25 * one_level, path.name
