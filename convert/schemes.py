"""Naming schemes as data: each scheme is a table of rules between canonical and foreign names.

Canonical names are facebookresearch/mae's. A rule pairs a canonical pattern with one foreign
pattern (or several, when the foreign scheme splits the tensor) and a named, invertible
transform; `read_also` lists other spellings of the same foreign names accepted when reading.
The same table runs both ways: `plan_to_canonical` reads a foreign checkpoint,
`plan_from_canonical` writes one. A plan is the full list of steps, built and checked before
any tensor is touched, and is what `--dry-run` prints.

Placeholders in patterns: `{n}` a layer index, `{p}` weight or bias; the others name a fixed
set of module names.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..models.config import FULL
from .blas import transposed_exactly
from .tensors import TensorRef, as_ref

PLACEHOLDERS = {
    "n": r"\d+",
    "p": r"weight|bias",
    "blocks": r"blocks|decoder_blocks",
    "ln": r"norm1|norm2",
    "norm": r"norm|decoder_norm|fc_norm",
}


class MappingError(ValueError):
    """Names that no rule of a scheme accounts for, or that collide."""


@dataclass(frozen=True)
class Transform:
    """An invertible operation between one canonical tensor and its foreign part(s)."""

    name: str
    to_foreign: Callable[[np.ndarray, int], tuple[np.ndarray, ...]]
    to_canonical: Callable[[Sequence[np.ndarray]], np.ndarray]
    foreign_shape: Callable[[tuple, int], tuple]  # the shape of each foreign part
    canonical_shape: Callable[[Sequence[tuple]], tuple]


RENAME = Transform("rename", lambda a, parts: (a,), lambda parts: parts[0],
                   lambda shape, parts: shape, lambda shapes: shapes[0])
TRANSPOSE_BAND = 128 << 10  # bytes of source rows per step of a blocked transpose
WIDE_ROW = 8 << 10          # rows wider than this are transposed in tiles instead of bands
TILE = (16, 512)            # source rows x columns of such a tile


def transposed(array: np.ndarray) -> np.ndarray:
    """`array.T` in C order, the same bytes: by OpenBLAS where it promises them (see blas.py), else
    copied in pieces that stay in cache while their columns are scattered. A band of 16 to 64 source
    rows (the least power of two that makes 128 KiB) at a time; rows over 8 KiB in 16 x 512 tiles, a
    column of tiles at a time, so the output rows being filled stay in cache and TLB too. Measured
    (GB/s, best of 5-9, this machine): ViT-H fc1 5120 x 1280, whole-array copy 0.9, bands of 16 rows
    1.1-2.1, of 32 rows 2.4-3.1; fc2 1280 x 5120, bands of 16 rows 1.1-1.7, tiles 1.4-1.6 (bands of
    32 rows: 1.0-1.2)."""
    if array.ndim != 2:
        return np.array(array.T, order="C")  # a copy even of a vector: the source may be a read-only map
    fast = transposed_exactly(array)
    if fast is not None:
        return fast
    out = np.empty(array.shape[::-1], array.dtype)
    height, width = array.shape
    row_bytes = width * array.dtype.itemsize
    if row_bytes > WIDE_ROW:
        tile_rows, tile_columns = TILE
        for column in range(0, width, tile_columns):
            for row in range(0, height, tile_rows):
                out[column:column + tile_columns, row:row + tile_rows] = \
                    array[row:row + tile_rows, column:column + tile_columns].T
        return out
    rows = min(64, max(16, 1 << max(0, TRANSPOSE_BAND // max(1, row_bytes) - 1).bit_length()))  # a power of two
    for start in range(0, height, rows):
        out[:, start:start + rows] = array[start:start + rows].T
    return out


# A (in, out) weight in frameworks whose Linear computes x @ W.
TRANSPOSE = Transform("transpose", lambda a, parts: (transposed(a),),
                      lambda parts: transposed(parts[0]),
                      lambda shape, parts: shape[::-1], lambda shapes: shapes[0][::-1])
# A fused qkv (3D, ...) <-> query, key, value (D, ...) each.
SPLIT = Transform("split", lambda a, parts: tuple(np.split(a, parts, axis=0)),
                  lambda parts: np.concatenate(parts, axis=0),
                  lambda shape, parts: (shape[0] // parts, *shape[1:]),
                  lambda shapes: (sum(s[0] for s in shapes), *shapes[0][1:]))


@dataclass(frozen=True)
class Rule:
    canonical: str
    foreign: tuple[str, ...]
    transform: Transform = RENAME
    read_also: tuple[tuple[str, ...], ...] = ()  # alternative spellings of `foreign`, read only

    def __post_init__(self):
        as_tuple = lambda names: (names,) if isinstance(names, str) else tuple(names)  # noqa: E731
        object.__setattr__(self, "foreign", as_tuple(self.foreign))
        object.__setattr__(self, "read_also", tuple(as_tuple(names) for names in self.read_also))


@functools.lru_cache(maxsize=None)
def _compile(pattern: str) -> re.Pattern:
    regex = re.escape(pattern)
    for key, alternatives in PLACEHOLDERS.items():
        regex = regex.replace(re.escape("{" + key + "}"), f"(?P<{key}>{alternatives})")
    return re.compile(regex + r"\Z")


@dataclass(frozen=True)
class Step:
    """One line of a plan: foreign name(s) <-> canonical name, through a transform."""

    canonical: str
    foreign: tuple[str, ...]
    transform: Transform = RENAME


@dataclass(frozen=True)
class Scheme:
    """One naming scheme: its rule table and the facts of its files."""

    name: str
    description: str
    rules: tuple[Rule, ...]
    framework: str                   # whose files these are: "torch" or "mindspore"
    formats: tuple[str, ...] = ()    # the formats whose files use this scheme unless told otherwise
    # Prefixes of training state stored beside the model by parameter name (optimizer moments by
    # the scheme's own names come first); () where a file's optimizer state is not kept by name.
    training_prefixes: tuple[str, ...] = ()
    metadata_tag: str = "pt"         # the framework tag safetensors metadata carries ('format')
    # Names no rule matches are the same in this scheme as in the canonical one.
    passthrough: bool = False
    # Other names for the same names: libraries whose files use them exactly (--to/--from take them).
    aliases: tuple[str, ...] = ()
    # Where its torch files keep the state dict and the settings maeconv records ('args' holds the
    # reference's argparse names; 'meta' a maeconv.settings string, as OpenMMLab keeps its meta).
    torch_keys: tuple[str, str] = ("model", "args")
    # Canonical patterns --dtype fp16/bf16 casts in this scheme's files; every other floating tensor
    # stays float32 (the library builds it float32 whatever its parameter precision). None: all.
    low_precision: tuple[str, ...] | None = None
    # Where its rules were checked against the library's own source (README's scheme table).
    verified: str = ""
    _compiled: list = field(default=None, init=False, repr=False, compare=False)

    @property
    def optimizer_prefixes(self) -> tuple[str, ...]:
        """Optimizer moments stored as <prefix><parameter name> (MindSpore's adam_m./adam_v.)."""
        return tuple(prefix for prefix in self.training_prefixes if prefix in MOMENT_PREFIXES)

    def casts(self, canonical_name: str) -> bool:
        """Whether --dtype fp16/bf16 casts this canonical tensor in this scheme's files."""
        if self.low_precision is None:
            return True
        return any(_compile(pattern).match(canonical_name) for pattern in self.low_precision)

    def _patterns(self):
        if self._compiled is None:
            compiled = [(rule, _compile(rule.canonical),
                         [[_compile(f) for f in spelling] for spelling in (rule.foreign, *rule.read_also)])
                        for rule in self.rules]
            object.__setattr__(self, "_compiled", compiled)
        return self._compiled

    def plan_from_canonical(self, names: Iterable[str]) -> list[Step]:
        steps, unmapped = [], []
        for name in names:
            for rule, canonical, _ in self._patterns():
                match = canonical.match(name)
                if match:
                    steps.append(Step(name, tuple(f.format(**match.groupdict()) for f in rule.foreign),
                                      rule.transform))
                    break
            else:
                (steps.append(Step(name, (name,))) if self.passthrough else unmapped.append(name))
        _raise_unmapped(unmapped, f"canonical names with no {self.name} counterpart")
        seen: dict[str, str] = {}
        for step in steps:
            for target in step.foreign:
                if target in seen:
                    raise MappingError(f"{seen[target]!r} and {step.canonical!r} both map to {self.name} name {target!r}")
                seen[target] = step.canonical
        return steps

    def plan_to_canonical(self, names: Iterable[str]) -> list[Step]:
        groups: dict[str, tuple[Rule | None, dict[int, str]]] = {}
        unmapped = []
        for name in names:
            found = self.match_foreign(name) or ((None, name, 0) if self.passthrough else None)
            if found is None:
                unmapped.append(name)
                continue
            rule, canonical, part = found
            slot = groups.setdefault(canonical, (rule, {}))[1]
            if part in slot:
                raise MappingError(f"{slot[part]!r} and {name!r} both map to {canonical!r}")
            slot[part] = name
        _raise_unmapped(unmapped, f"names that are not {self.name} names")
        steps, incomplete = [], []
        for canonical, (rule, parts) in groups.items():
            count = len(rule.foreign) if rule else 1
            if len(parts) != count:
                incomplete.append(f"{canonical} (has {sorted(parts.values())})")
                continue
            steps.append(Step(canonical, tuple(parts[i] for i in range(count)), rule.transform if rule else RENAME))
        _raise_unmapped(incomplete, "tensors with some of their parts missing")
        return steps

    def canonical_names(self, names: Iterable[str]) -> dict[str, str]:
        """Own name -> canonical name for a scheme that only renames these names (a twin's)."""
        plan = self.plan_to_canonical(names)
        if any(step.transform is not RENAME for step in plan):
            raise MappingError(f"{self.name} names do not map one to one")
        return {step.foreign[0]: step.canonical for step in plan}

    def match_foreign(self, name: str):
        """(rule, canonical name, part index) for a foreign name, or None."""
        for rule, _, spellings in self._patterns():
            for patterns in spellings:
                for part, pattern in enumerate(patterns):
                    match = pattern.match(name)
                    if match:
                        return rule, rule.canonical.format(**match.groupdict()), part
        return None


def _raise_unmapped(names: list[str], what: str) -> None:
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise MappingError(f"{len(names)} {what}: {shown}")


def apply_to_canonical(plan: Sequence[Step], foreign: Mapping[str, TensorRef | np.ndarray]) -> dict[str, TensorRef]:
    """Canonical tensors, lazily: nothing is read until a tensor's `load()`."""
    out = {}
    for step in plan:
        parts = [as_ref(foreign[n]) for n in step.foreign]
        if step.transform is RENAME:
            out[step.canonical] = parts[0]
            continue
        shape = step.transform.canonical_shape([p.shape for p in parts])
        read = lambda t=step.transform, ps=parts: t.to_canonical([p.mapped() for p in ps])  # noqa: E731
        # parts joined along the first axis are the whole's bytes one after another: written as such
        joined = step.transform is SPLIT and len({(p.dtype, p.shape[1:]) for p in parts}) == 1
        out[step.canonical] = TensorRef(parts[0].dtype, shape, read, pieces=tuple(parts) if joined else ())
    return out


def apply_from_canonical(plan: Sequence[Step], canonical: Mapping[str, TensorRef | np.ndarray]) -> dict[str, TensorRef]:
    out = {}
    for step in plan:
        source = as_ref(canonical[step.canonical])
        count = len(step.foreign)
        if step.transform is RENAME:
            out[step.foreign[0]] = source
            continue
        shape = step.transform.foreign_shape(source.shape, count)
        for index, name in enumerate(step.foreign):
            if step.transform is SPLIT and source.span is not None:
                # a part of a split along the first axis is a byte range of the stored tensor: it is
                # copied from the file as it is, not read whole once per part
                part = source.nbytes // count
                out[name] = TensorRef.in_file(source.span.path, source.dtype, shape, source.span.offset + index * part)
                continue
            read = lambda t=step.transform, s=source, i=index, c=count: t.to_foreign(s.mapped(), c)[i]  # noqa: E731
            out[name] = TensorRef(source.dtype, shape, read)
    return out


# --- the tables ---

def block_rules(canonical_prefix: str, foreign_prefix: str, table, read_also_prefixes=()) -> tuple[Rule, ...]:
    """Rules for every tensor of the transformer blocks under two prefixes, from a per-block table
    of (canonical suffix, foreign suffix(es), transform)."""
    rules = []
    for canonical, foreign, transform in table:
        foreign = (foreign,) if isinstance(foreign, str) else foreign
        spell = lambda prefix: tuple(f"{prefix}.{f}" for f in foreign)  # noqa: E731
        rules.append(Rule(f"{canonical_prefix}.{canonical}", spell(foreign_prefix), transform,
                          tuple(spell(p) for p in read_also_prefixes)))
    return tuple(rules)


# MindSpore's optimizer moments, and maeconv's trainer's bookkeeping, by parameter name.
MOMENT_PREFIXES = ("adam_m.", "adam_v.")
MINDSPORE_TRAINING = (*MOMENT_PREFIXES, "train.")

FACEBOOK = Scheme(
    "facebook",
    "facebookresearch/mae and timm: the canonical names",
    rules=(),
    framework="torch",
    formats=("torch", "safetensors"),
    passthrough=True,
    aliases=("timm",),
    verified="facebookresearch/mae models_mae.py, models_vit.py; timm vision_transformer.py (vit_*.mae)",
)

MINDSPORE = Scheme(
    "mindspore",
    "maeconv's MindSpore twin and MindCV (mindcv.models.mae): canonical names, but nn.LayerNorm's gamma/beta",
    rules=(
        Rule("{blocks}.{n}.{ln}.weight", "{blocks}.{n}.{ln}.gamma"),
        Rule("{blocks}.{n}.{ln}.bias", "{blocks}.{n}.{ln}.beta"),
        Rule("{norm}.weight", "{norm}.gamma"),
        Rule("{norm}.bias", "{norm}.beta"),
    ),
    framework="mindspore",
    formats=("mindspore",),
    training_prefixes=MINDSPORE_TRAINING,
    metadata_tag="ms",
    passthrough=True,
    aliases=("mindcv",),
    verified="models/mindspore (the twin); mindcv mindcv/models/mae.py, vit.py, layers/mlp.py, layers/patch_embed.py",
)

HF_BLOCK = (
    ("norm1.{p}", "layernorm_before.{p}", RENAME),
    ("attn.qkv.{p}", ("attention.attention.query.{p}", "attention.attention.key.{p}",
                      "attention.attention.value.{p}"), SPLIT),
    ("attn.proj.{p}", "attention.output.dense.{p}", RENAME),
    ("norm2.{p}", "layernorm_after.{p}", RENAME),
    ("mlp.fc1.{p}", "intermediate.dense.{p}", RENAME),
    ("mlp.fc2.{p}", "output.dense.{p}", RENAME),
)

# ViTMAEModel files carry the encoder without the "vit." prefix; transformers 5 writes the
# decoder layers as decoder.decoder_encoder.layer.N. Both are read; the Hub's names are written.
HF = Scheme(
    "hf",
    "HuggingFace transformers ViTMAEForPreTraining / ViTMAEModel (names on disk)",
    rules=(
        Rule("cls_token", "vit.embeddings.cls_token", read_also=("embeddings.cls_token",)),
        Rule("pos_embed", "vit.embeddings.position_embeddings", read_also=("embeddings.position_embeddings",)),
        Rule("patch_embed.proj.{p}", "vit.embeddings.patch_embeddings.projection.{p}",
             read_also=("embeddings.patch_embeddings.projection.{p}",)),
        *block_rules("blocks.{n}", "vit.encoder.layer.{n}", HF_BLOCK, ["encoder.layer.{n}"]),
        Rule("norm.{p}", "vit.layernorm.{p}", read_also=("layernorm.{p}",)),
        Rule("mask_token", "decoder.mask_token"),
        Rule("decoder_pos_embed", "decoder.decoder_pos_embed"),
        Rule("decoder_embed.{p}", "decoder.decoder_embed.{p}"),
        *block_rules("decoder_blocks.{n}", "decoder.decoder_layers.{n}", HF_BLOCK,
                     ["decoder.decoder_encoder.layer.{n}"]),
        Rule("decoder_norm.{p}", "decoder.decoder_norm.{p}"),
        Rule("decoder_pred.{p}", "decoder.decoder_pred.{p}"),
    ),
    framework="torch",
    formats=("hf-dir",),
    verified="transformers models/vit_mae/modeling_vit_mae.py, loaded by transformers itself in the tests",
)

MINDFORMERS_BLOCK = (
    ("norm1.weight", "layernorm1.gamma", RENAME),
    ("norm1.bias", "layernorm1.beta", RENAME),
    ("attn.qkv.{p}", ("attention.dense1.{p}", "attention.dense2.{p}", "attention.dense3.{p}"), SPLIT),
    ("attn.proj.weight", "attention.projection.weight", TRANSPOSE),
    ("attn.proj.bias", "attention.projection.bias", RENAME),
    ("norm2.weight", "layernorm2.gamma", RENAME),
    ("norm2.bias", "layernorm2.beta", RENAME),
    ("mlp.fc1.weight", "output.mapping.weight", TRANSPOSE),
    ("mlp.fc1.bias", "output.mapping.bias", RENAME),
    ("mlp.fc2.weight", "output.projection.weight", TRANSPOSE),
    ("mlp.fc2.bias", "output.projection.bias", RENAME),
)

# The decoder sits at the top level, without "vit.". MindFormers' own convert_weight.py prefixed
# every name with "vit." (so its model silently never loaded that decoder): read that too.
MINDFORMERS_DECODER_READ_ALSO = "vit."
# MindFormers builds only the blocks' Linear layers in param_init_type (float16 in its fp16 configs):
# tokens, position tables, LayerNorms, the patch embedding, decoder_embed/decoder_pred and the head
# are float32 parameters whatever it is, and MindSpore refuses to load a checkpoint whose dtypes differ.
MINDFORMERS_LOW_PRECISION = tuple(f"{{blocks}}.{{n}}.{layer}.{{p}}"
                                  for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))


def _mindformers_decoder(canonical: str, foreign, transform=RENAME) -> Rule:
    return Rule(canonical, foreign, transform, read_also=(MINDFORMERS_DECODER_READ_ALSO + foreign,))


MINDFORMERS = Scheme(
    "mindformers",
    "MindFormers ViTMAEForPreTraining and ViT classifier (r0.6 to r1.5)",
    rules=(
        Rule("cls_token", "vit.cls_tokens"),
        Rule("pos_embed", "vit.pos_embed"),
        Rule("patch_embed.proj.{p}", "vit.patch_embed.proj.{p}"),
        *block_rules("blocks.{n}", "vit.blocks.{n}", MINDFORMERS_BLOCK),
        Rule("norm.weight", "vit.norm.gamma"),
        Rule("norm.bias", "vit.norm.beta"),
        Rule("fc_norm.weight", "vit.fc_norm.gamma"),
        Rule("fc_norm.bias", "vit.fc_norm.beta"),
        Rule("head.{p}", "head.{p}"),
        _mindformers_decoder("mask_token", "mask_tokens"),
        _mindformers_decoder("decoder_pos_embed", "decoder_pos_embed"),
        _mindformers_decoder("decoder_embed.{p}", "decoder_embed.{p}"),
        *block_rules("decoder_blocks.{n}", "decoder_blocks.{n}", MINDFORMERS_BLOCK,
                     [MINDFORMERS_DECODER_READ_ALSO + "decoder_blocks.{n}"]),
        _mindformers_decoder("decoder_norm.weight", "decoder_norm.gamma"),
        _mindformers_decoder("decoder_norm.bias", "decoder_norm.beta"),
        _mindformers_decoder("decoder_pred.{p}", "decoder_pred.{p}"),
    ),
    framework="mindspore",
    training_prefixes=MINDSPORE_TRAINING,
    metadata_tag="ms",
    low_precision=MINDFORMERS_LOW_PRECISION,
    verified="mindformers (the source before its 2025 removal) models/mae/mae.py, mae_modules.py, models/vit/vit.py, "
             "vit_modules.py, convert_weight.py; loaded by MindFormers' own models (334/334, 200/200 names)",
)

# OpenMMLab (mmpretrain 1.x; mmselfsup): MAE's backbone MAEViT / VisionTransformer, its neck
# MAEPretrainDecoder, the fine-tuned classifier's LinearClsHead. mmcv's FFN keeps fc1 as
# layers.0.0 (Linear, activation, dropout) and fc2 as layers.1; norms are build_norm_layer's "ln"
# names, so ln1 is a block's first norm, the backbone's final norm (absent in the fine-tuned
# classifier, final_norm=False) and the decoder's norm. Whole names match, never parts. (mmselfsup
# 0.x fine-tuned its classifiers under other names, backbone.fc_norm and head.head: not read.)
OPENMMLAB_BLOCK = (
    ("norm1.{p}", "ln1.{p}", RENAME),
    ("attn.qkv.{p}", "attn.qkv.{p}", RENAME),
    ("attn.proj.{p}", "attn.proj.{p}", RENAME),
    ("norm2.{p}", "ln2.{p}", RENAME),
    ("mlp.fc1.{p}", "ffn.layers.0.0.{p}", RENAME),
    ("mlp.fc2.{p}", "ffn.layers.1.{p}", RENAME),
)

OPENMMLAB = Scheme(
    "mmpretrain",
    "OpenMMLab mmpretrain / mmselfsup MAE (backbone., neck., head. modules) and its fine-tuned ViT",
    rules=(
        Rule("cls_token", "backbone.cls_token"),
        Rule("pos_embed", "backbone.pos_embed"),
        Rule("patch_embed.proj.{p}", "backbone.patch_embed.projection.{p}"),
        *block_rules("blocks.{n}", "backbone.layers.{n}", OPENMMLAB_BLOCK),
        Rule("norm.{p}", "backbone.ln1.{p}"),
        Rule("fc_norm.{p}", "backbone.ln2.{p}"),
        Rule("head.{p}", "head.fc.{p}"),
        Rule("mask_token", "neck.mask_token"),
        Rule("decoder_pos_embed", "neck.decoder_pos_embed"),
        Rule("decoder_embed.{p}", "neck.decoder_embed.{p}"),
        *block_rules("decoder_blocks.{n}", "neck.decoder_blocks.{n}", OPENMMLAB_BLOCK),
        Rule("decoder_norm.{p}", "neck.ln1.{p}"),
        Rule("decoder_pred.{p}", "neck.decoder_pred.{p}"),
    ),
    framework="torch",
    aliases=("openmmlab", "mmselfsup"),
    torch_keys=("state_dict", "meta"),
    verified="mmpretrain models/backbones/vision_transformer.py, models/selfsup/mae.py, models/necks/mae_neck.py, "
             "models/heads/linear_head.py, configs/mae; mmselfsup 0.x and 1.x models/necks/mae_neck.py, "
             "backbones/mae_vit.py (pretraining); mmcv cnn/bricks/transformer.py (FFN, PatchEmbed)",
)

SCHEMES: dict[str, Scheme] = {scheme.name: scheme for scheme in (FACEBOOK, HF, MINDFORMERS, MINDSPORE, OPENMMLAB)}
SCHEME_ALIASES = {alias: scheme.name for scheme in SCHEMES.values() for alias in scheme.aliases}
# What a scheme's library refuses to load, by the name a user gives it: (scheme or alias, kind) -> why.
REFUSED_KINDS = {
    ("timm", FULL): "timm refuses full MAE checkpoints (its ViT loader takes a top-level mask_token for "
                      "DINOv2's and drops it, and has no decoder); write the encoder with --kind encoder "
                      "(what timm's vit_*_patch*.mae models hold), or --to facebook for the full file",
}


# What MindSpore's training wrappers keep beside the model, by name.
TRAINING_STATE_NAMES = frozenset({"global_step", "epoch_num", "step_num", "learning_rate", "current_iterator_step",
                                  "scale_sense", "loss_scale", "beta1_power", "beta2_power"})
TRAINING_PREFIXES = tuple(dict.fromkeys(p for scheme in SCHEMES.values() for p in scheme.training_prefixes))


def is_training_state(name: str) -> bool:
    """Optimizer state or training bookkeeping, not part of the model, in any scheme's files."""
    return name.startswith(TRAINING_PREFIXES) or name in TRAINING_STATE_NAMES


def scheme_of_format(fmt: str) -> Scheme:
    """The scheme a format's files use unless told otherwise."""
    return next(scheme for scheme in SCHEMES.values() if fmt in scheme.formats)


def get_scheme(name: str) -> Scheme:
    name = SCHEME_ALIASES.get(name, name)
    if name not in SCHEMES:
        raise KeyError(f"unknown naming scheme {name!r}; known: {', '.join([*SCHEMES, *SCHEME_ALIASES])}")
    return SCHEMES[name]
