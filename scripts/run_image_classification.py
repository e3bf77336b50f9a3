"""Train an image classifier: ContextPool ViT/ResNet or transformers' ViT/ResNet of the same size.

In the style of transformers' `examples/pytorch/image-classification/run_image_classification.py`
(HfArgumentParser + TrainingArguments + Trainer). Data: a Hub dataset (`--dataset_name cifar10`,
needs network) or local image folders `<dir>/<label>/<image>` (`--train_dir`, `--validation_dir`).
Offline data: `contextpool-hf prepare-data --tasks images` writes data/images/mnist/{train,validation,test}.

    python scripts/run_image_classification.py --model_type contextpool_vit \\
        --train_dir data/images/mnist/train --validation_dir data/images/mnist/validation \\
        --image_size 28 --config_overrides "hidden_size=64,num_hidden_layers=4,patch_size=4" \\
        --output_dir out/cp-vit --num_train_epochs 3 --per_device_train_batch_size 64 \\
        --learning_rate 1e-3 --eval_strategy epoch --save_strategy no --use_cpu

Augmentation uses PIL + the image processor (no torchvision): `--augment crop` (random
translation by pad-and-crop), `flip` (horizontal flips) or both ("crop,flip").
Accuracy comes from the `evaluate` module shipped in the package (contextpool_hf/metrics; offline).
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    ResNetConfig,
    ResNetForImageClassification,
    Trainer,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    set_seed,
)

from contextpool_hf.metrics import accuracy_metrics
from contextpool_hf.training_callbacks import NonFiniteLossCallback

logger = logging.getLogger(__name__)

MODEL_TYPES = ("contextpool_vit", "vit", "contextpool_resnet", "resnet")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# Small defaults (2-core CPU friendly); change them with --config_overrides.
VIT_DEFAULTS = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128, patch_size=4)
RESNET_DEFAULTS = dict(embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1], layer_type="basic")


@dataclass
class ModelArguments:
    model_type: str = field(default="contextpool_vit", metadata={"help": f"one of {MODEL_TYPES}", "choices": MODEL_TYPES})
    model_name_or_path: str | None = field(
        default=None, metadata={"help": "fine-tune this checkpoint (local folder or Hub id) instead of a new model"}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": 'comma-separated k=v config fields, e.g. "hidden_size=64,pool_layers=[0,1]" (JSON values)'},
    )
    image_size: int = field(default=32, metadata={"help": "images are resized to image_size x image_size"})
    trust_remote_code: bool = field(default=False, metadata={"help": "needed to load a ContextPool folder without the package"})


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "a datasets name, e.g. cifar10 (needs the Hub)"})
    dataset_config_name: str | None = field(default=None)
    train_dir: str | None = field(default=None, metadata={"help": "image folder <dir>/<label>/<file>"})
    validation_dir: str | None = field(default=None, metadata={"help": "image folder <dir>/<label>/<file>"})
    test_dir: str | None = field(default=None, metadata={"help": "optional held-out image folder, reported as test_*"})
    train_val_split: float = field(default=0.1, metadata={"help": "validation share when there is no validation split"})
    image_column_name: str = field(default="image", metadata={"help": "falls back to 'img' (cifar10)"})
    label_column_name: str = field(default="label")
    max_train_samples: int | None = field(default=None)
    max_eval_samples: int | None = field(default=None)
    augment: str = field(default="crop", metadata={"help": '"none", "crop", "flip" or "crop,flip"'})


# --------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------


def image_folder_dataset(folder: str, class_names: list[str] | None = None):
    """A datasets.Dataset with columns image, label from `<folder>/<label>/<file>`."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    if not os.path.isdir(folder):
        raise ValueError(f"image folder not found: {folder}")
    names = class_names or sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not names:
        raise ValueError(f"{folder} has no class sub-folders (<dir>/<label>/<image>)")
    paths, labels = [], []
    for index, name in enumerate(names):
        class_dir = os.path.join(folder, name)
        if not os.path.isdir(class_dir):
            continue
        for file in sorted(os.listdir(class_dir)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                paths.append(os.path.join(class_dir, file))
                labels.append(index)
    if not paths:
        raise ValueError(f"no images found under {folder}")
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names)})
    return Dataset.from_dict({"image": paths, "label": labels}, features=features)


def load_data(data_args: DataArguments, seed: int):
    """-> (train, validation, test or None, image column, label column, class names)."""
    if data_args.dataset_name is not None:
        from datasets import load_dataset

        raw = load_dataset(data_args.dataset_name, data_args.dataset_config_name)
        train = raw["train"]
        for split in ("validation", "test"):
            if split in raw:
                validation = raw[split]
                break
        else:
            parts = train.train_test_split(test_size=data_args.train_val_split, seed=seed)
            train, validation = parts["train"], parts["test"]
    elif data_args.train_dir is not None:
        train = image_folder_dataset(data_args.train_dir)
        names = train.features["label"].names
        if data_args.validation_dir is not None:
            validation = image_folder_dataset(data_args.validation_dir, names)
        else:
            parts = train.train_test_split(test_size=data_args.train_val_split, seed=seed, stratify_by_column="label")
            train, validation = parts["train"], parts["test"]
    else:
        raise ValueError("give --dataset_name or --train_dir (and optionally --validation_dir)")
    image_col = data_args.image_column_name
    if image_col not in train.column_names:
        fallback = next((c for c in ("image", "img") if c in train.column_names), None)
        if fallback is None:
            raise ValueError(f"image column {image_col!r} not in {train.column_names}")
        image_col = fallback
    label_col = data_args.label_column_name
    if label_col not in train.column_names:
        raise ValueError(f"label column {label_col!r} not in {train.column_names}")
    feature = train.features[label_col]
    names = list(feature.names) if hasattr(feature, "names") else [str(v) for v in sorted(set(train[label_col]))]
    if data_args.max_train_samples is not None:
        train = train.shuffle(seed=seed).select(range(min(data_args.max_train_samples, len(train))))
    if data_args.max_eval_samples is not None:
        validation = validation.shuffle(seed=seed).select(range(min(data_args.max_eval_samples, len(validation))))
    test = image_folder_dataset(data_args.test_dir, names) if data_args.test_dir is not None else None
    return train, validation, test, image_col, label_col, names


def augment_image(image, modes: set[str], rng: random.Random):
    """Random translation (pad by size/8, crop back) and/or horizontal flip, with PIL."""
    from PIL import Image, ImageOps

    image = image.convert("RGB")
    if "crop" in modes:
        w, h = image.size
        pad = max(1, min(w, h) // 8)
        canvas = Image.new("RGB", (w + 2 * pad, h + 2 * pad))
        canvas.paste(image, (pad, pad))
        left, top = rng.randint(0, 2 * pad), rng.randint(0, 2 * pad)
        image = canvas.crop((left, top, left + w, top + h))
    if "flip" in modes and rng.random() < 0.5:
        image = ImageOps.mirror(image)
    return image


def make_transforms(processor, image_col: str, label_col: str, augment: str, seed: int):
    modes = {m.strip() for m in augment.split(",") if m.strip() and m.strip() != "none"}
    unknown = modes - {"crop", "flip"}
    if unknown:
        raise ValueError(f"unknown --augment modes {sorted(unknown)}; use none, crop, flip")
    rng = random.Random(seed)

    def train_transform(batch):
        images = [augment_image(img, modes, rng) for img in batch[image_col]]
        out = {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}
        out["labels"] = list(batch[label_col])
        return out

    def eval_transform(batch):
        images = [img.convert("RGB") for img in batch[image_col]]
        out = {"pixel_values": processor(images, return_tensors="pt")["pixel_values"]}
        out["labels"] = list(batch[label_col])
        return out

    return train_transform, eval_transform


def collate_fn(examples):
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long),
    }


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


def parse_overrides(text: str | None, config=None) -> dict:
    """``--config_overrides`` -> typed dict: `PretrainedConfig.update_from_string` rules checked against
    `config` (unknown keys, wrong types and unbalanced brackets are errors naming the item); without a
    config, JSON values (see `contextpool_hf.config_overrides`)."""
    from contextpool_hf.config_overrides import parse_config_overrides, parse_untyped_overrides

    return parse_config_overrides(text, config) if config is not None else parse_untyped_overrides(text)


def build_model(model_args: ModelArguments, names: list[str]):
    """A new model of `model_type` (small defaults + overrides), or the checkpoint to fine-tune."""
    labels = {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    if model_args.model_name_or_path is not None:
        from transformers import AutoConfig

        reference = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
        overrides = parse_overrides(model_args.config_overrides, reference)
        return AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path,
            trust_remote_code=model_args.trust_remote_code,
            ignore_mismatched_sizes=True,
            **labels,
            **overrides,
        )
    import contextpool_hf  # noqa: F401  (registers the ContextPool classes; save_pretrained writes remote code)
    from contextpool_hf import (
        ContextPoolResNetConfig,
        ContextPoolResNetForImageClassification,
        ContextPoolViTConfig,
        ContextPoolViTForImageClassification,
    )

    kind = model_args.model_type
    if kind not in MODEL_TYPES:
        raise ValueError(f"--model_type must be one of {', '.join(MODEL_TYPES)}, got {kind!r}")
    config_class, model_class = {
        "vit": (ViTConfig, ViTForImageClassification),
        "contextpool_vit": (ContextPoolViTConfig, ContextPoolViTForImageClassification),
        "resnet": (ResNetConfig, ResNetForImageClassification),
        "contextpool_resnet": (ContextPoolResNetConfig, ContextPoolResNetForImageClassification),
    }[kind]
    defaults = {**VIT_DEFAULTS, "image_size": model_args.image_size} if "vit" in kind else dict(RESNET_DEFAULTS)
    # the overrides are checked against the config they change (known keys, field types)
    overrides = parse_overrides(model_args.config_overrides, config_class(**defaults, **labels))
    return model_class(config_class(**{**defaults, **labels, **overrides}))


def build_processor(model_args: ModelArguments):
    if model_args.model_name_or_path is not None:
        try:
            return AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
        except (OSError, ValueError):
            logger.warning("no image processor in %s; using a new one", model_args.model_name_or_path)
    from transformers import ViTImageProcessorPil

    size = model_args.image_size
    # do_convert_rgb: grayscale (and RGBA) images become RGB before the RGB model sees them.
    return ViTImageProcessorPil(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3, do_convert_rgb=True
    )


def compute_metrics(eval_pred) -> dict:
    # The shipped `evaluate` accuracy module (offline), loaded by local path.
    return accuracy_metrics(eval_pred)


def count_parameters(model) -> int:
    return model.num_parameters()  # tied weights counted once


def check_arguments(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> None:
    """Values argparse lets through that would be misread or crash deep inside: errors naming the argument."""
    from contextpool_hf.training_args import check_int, check_number, check_training_arguments

    check_int("image_size", model_args.image_size)
    check_number("train_val_split", data_args.train_val_split, low=0.0, high=1.0, low_open=True, high_open=True)
    check_int("max_train_samples", data_args.max_train_samples, optional=True)
    check_int("max_eval_samples", data_args.max_eval_samples, optional=True)
    for name in ("train_dir", "validation_dir", "test_dir"):
        folder = getattr(data_args, name)
        if folder is not None and not os.path.isdir(folder):
            raise ValueError(f"--{name} {folder}: no such folder (expected <dir>/<label>/<image>)")
    check_training_arguments(training_args)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def train_and_evaluate(model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments) -> dict:
    """Train, evaluate and save (model + image processor + remote code). Returns the metrics."""
    check_arguments(model_args, data_args, training_args)
    set_seed(training_args.seed)
    train, validation, test, image_col, label_col, names = load_data(data_args, training_args.seed)
    processor = build_processor(model_args)
    model = build_model(model_args, names)
    train_tf, eval_tf = make_transforms(processor, image_col, label_col, data_args.augment, training_args.seed)
    train.set_transform(train_tf)
    validation.set_transform(eval_tf)
    if test is not None:
        test.set_transform(eval_tf)
    training_args.remove_unused_columns = False
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train if training_args.do_train else None,
        eval_dataset=validation,
        data_collator=collate_fn,
        compute_metrics=compute_metrics,
        callbacks=[NonFiniteLossCallback()],  # a NaN/inf loss stops the run with an error naming the step
    )
    metrics: dict = {"parameters": count_parameters(model), "model_type": model_args.model_type}
    if training_args.do_train:
        start = time.perf_counter()
        result = trainer.train()
        metrics["train_wall_s"] = time.perf_counter() - start
        metrics["train_loss"] = result.training_loss
        trainer.save_model()
        processor.save_pretrained(training_args.output_dir)
    if training_args.do_eval:
        start = time.perf_counter()
        metrics.update(trainer.evaluate())
        metrics["eval_wall_s"] = time.perf_counter() - start
        if test is not None:
            metrics.update(trainer.evaluate(test, metric_key_prefix="test"))
    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(os.path.join(training_args.output_dir, "vision_results.json"), "w") as handle:
            json.dump(metrics, handle, indent=2, default=str)
    return metrics


def main(argv: list[str] | None = None) -> dict:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    args = argv if argv is not None else sys.argv[1:]
    if len(args) == 1 and args[0].endswith(".json"):
        model_args, data_args, training_args = parser.parse_json_file(os.path.abspath(args[0]))
    else:
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(args)
    if not (training_args.do_train or training_args.do_eval):
        training_args.do_train = training_args.do_eval = True
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    metrics = train_and_evaluate(model_args, data_args, training_args)
    print(json.dumps(metrics, indent=2, default=str))
    return metrics


if __name__ == "__main__":
    from contextpool_hf.training import script_main

    script_main(main)  # a bad argument or NaN loss: one line on stderr, exit 1
