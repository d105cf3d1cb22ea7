"""Semantic segmentation end to end through the real configs, factory and commands:
train two steps, evaluate (whole, slide, --aug-test), draw; parameter counts against the paper."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from flatten_dense.cli import main
from flatten_dense.commands.build import build_network, load_run, task_from_checkpoint
from flatten_dense.commands.infer import infer
from flatten_dense.commands.test import test as run_test
from flatten_dense.commands.train import train
from flatten_dense.core.config import ConfigError
from flatten_dense.core.image_io import read_rgb_image
from flatten_dense.segmentation.ade20k import ADE20KDataset
from flatten_dense.segmentation.inference import EvaluationSettings
from flatten_dense.segmentation.labels import label_array, read_label, reduce_zero_label
from flatten_dense.segmentation.metrics import SegmentationMetrics
from flatten_dense.segmentation.synthetic import make_synthetic_ade20k
from flatten_dense.segmentation.transforms import build_segmentation_transforms

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SEGMENTATION_CONFIGS = sorted((CONFIGS / "segmentation").glob("*.yaml"))
NUM_CLASSES = 4
HEAD_CONFIGS = {
    "semantic_fpn": CONFIGS / "segmentation" / "sem_fpn_flatten_pvt_t_ade20k_40k.yaml",
    "upernet": CONFIGS / "segmentation" / "upernet_flatten_swin_t_ade20k_160k.yaml",
}


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ade")
    return make_synthetic_ade20k(root, num_train=4, num_val=2, image_size=(64, 80), num_classes=NUM_CLASSES)


def tiny_overrides(head: str, root: Path, run_dir: Path) -> list[str]:
    """The real recipe, shrunk: a tiny backbone and head, 64 x 64 crops, two steps, one validation."""
    overrides = [
        f"data.root={root}",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.train_scale=[96,64]",
        "model.test_scale=[96,64]",
        "data.crop_size=[64,64]",
        "model.num_classes=null",
        "model.backbone.name=flatten_pvt_v2_b0",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.max_steps=2",
        "trainer.val_check_interval=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1",
        f"trainer.default_root_dir={run_dir}",
        "evaluation.window=[32,32]",
        "evaluation.stride=[24,24]",
    ]
    if head == "semantic_fpn":
        overrides += ["model.fpn_channels=32", "model.channels=32"]  # GroupNorm: 32 groups
    else:
        overrides += ["model.channels=16", "model.aux_channels=16"]
    return overrides


@pytest.fixture(scope="module")
def trained(ade_root: Path, tmp_path_factory) -> dict[str, tuple[list[str], Path, dict]]:
    """Each head trained two steps once; (overrides, run dir, final train metrics) per head."""
    runs = {}
    for head, config in HEAD_CONFIGS.items():
        run_dir = tmp_path_factory.mktemp(f"run_{head}")
        overrides = tiny_overrides(head, ade_root, run_dir)
        metrics = train(config, [*overrides, "resume=none"])
        runs[head] = (overrides, run_dir, metrics)
    return runs


@pytest.mark.parametrize("head", list(HEAD_CONFIGS))
def test_two_training_steps_then_evaluation(head: str, trained, ade_root: Path) -> None:
    overrides, run_dir, metrics = trained[head]
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert ("train/loss_aux" in metrics) == (head == "upernet")  # UperNet's auxiliary FCN head
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    assert checkpoint.is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    summary = run_test(HEAD_CONFIGS[head], checkpoint, overrides)
    assert set(summary["metrics"]) == {"test/mIoU", "test/mAcc", "test/aAcc"}
    assert all(0.0 <= v <= 1.0 for v in summary["metrics"].values())
    names = (ade_root / "class_names.txt").read_text().split()
    assert [row["class"] for row in summary["per_class"]] == names
    written = json.loads((run_dir / "metrics.json").read_text())
    assert written["metrics"] == summary["metrics"]


def test_test_metrics_equal_an_independent_evaluation(trained, ade_root: Path) -> None:
    """The task's dataset-level mIoU equals predicting each validation image by hand at its label
    size and summing one confusion matrix (each image once, logits at the original resolution)."""
    overrides, run_dir, _ = trained["semantic_fpn"]
    checkpoint = run_dir / "checkpoints" / "best.ckpt"
    summary = run_test(HEAD_CONFIGS["semantic_fpn"], checkpoint, overrides)
    task = task_from_checkpoint(load_run(HEAD_CONFIGS["semantic_fpn"], overrides, create_run_dir=False), checkpoint)
    dataset = ADE20KDataset(ade_root, "validation", transforms=build_segmentation_transforms("eval"))
    metric = SegmentationMetrics(NUM_CLASSES)
    with torch.no_grad():
        for image, target in dataset:
            label = target["mask"].as_subclass(torch.Tensor)
            image = image.as_subclass(torch.Tensor)[None]  # float, at the file's own size
            scale = min(96 / max(image.shape[-2:]), 64 / min(image.shape[-2:]))  # mmcv's keep-ratio rescale
            size = [int(side * scale + 0.5) for side in image.shape[-2:]]
            resized = torch.nn.functional.interpolate(image, size=size, mode="bilinear", align_corners=False)
            logits = task.model(resized)
            logits = torch.nn.functional.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)
            metric.update(logits.argmax(dim=1)[0], label)
    expected = metric.compute()
    assert summary["metrics"]["test/mIoU"] == pytest.approx(float(expected["mIoU"]), abs=1e-6)
    assert summary["metrics"]["test/aAcc"] == pytest.approx(float(expected["aAcc"]), abs=1e-6)


def images_only(root: Path, folder: Path) -> Path:
    """The dataset as a test server hands it out: images and class names, no annotations folder."""
    shutil.copytree(root / "images", folder / "images")
    shutil.copy(root / "class_names.txt", folder / "class_names.txt")
    return folder


def test_format_only_pngs_give_back_the_printed_miou(trained, ade_root: Path, tmp_path: Path, capsys) -> None:
    """`--format-only --out-dir` on a copy without labels writes one label PNG per image in ADE20K's
    server format (class + 1, so 1..K); mIoU recomputed from those files against the ground truth
    (minus 1, ignore 255, one dataset-level confusion matrix) is the mIoU `test` prints."""
    overrides, run_dir, _ = trained["semantic_fpn"]
    config, checkpoint = str(HEAD_CONFIGS["semantic_fpn"]), str(run_dir / "checkpoints" / "best.ckpt")
    assert main(["test", config, checkpoint, *overrides]) == 0
    printed_table = re.search(r"^test/mIoU\s+([0-9.]+)$", capsys.readouterr().out, flags=re.MULTILINE)
    printed = json.loads((run_dir / "metrics.json").read_text())["metrics"]["test/mIoU"]
    assert printed_table and float(printed_table.group(1)) == pytest.approx(printed, abs=5e-5)

    server = images_only(ade_root, tmp_path / "server")
    out_dir = tmp_path / "submission"
    argv = ["test", config, checkpoint, *overrides, f"data.root={server}", "--format-only", "--out-dir", str(out_dir)]
    assert main(argv) == 0
    assert "2 label PNGs (values 1..4) written to" in capsys.readouterr().out
    assert json.loads((run_dir / "metrics.json").read_text())["metrics"]["test/mIoU"] == printed  # left as it was
    images = sorted((ade_root / "images" / "validation").iterdir())
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{p.stem}.png" for p in images)
    metric = SegmentationMetrics(NUM_CLASSES)
    for image in images:
        values = label_array(out_dir / f"{image.stem}.png")
        assert values.shape == tuple(read_rgb_image(image).shape[-2:])
        assert 1 <= values.min() and values.max() <= NUM_CLASSES
        truth = reduce_zero_label(read_label(ade_root / "annotations" / "validation" / f"{image.stem}.png"))
        metric.update(torch.from_numpy(values) - 1, truth)
    assert float(metric.compute()["mIoU"]) == pytest.approx(printed, abs=1e-6)


def test_format_only_needs_a_writable_out_dir_before_any_work(tmp_path: Path, capsys) -> None:
    """The folder is checked first: a file in the way is named even though the checkpoint is missing."""
    config = str(HEAD_CONFIGS["semantic_fpn"])
    blocker = tmp_path / "taken"
    blocker.write_text("")
    missing = str(tmp_path / "missing.ckpt")
    assert main(["test", config, missing, "--format-only", "--out-dir", str(blocker)]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: --out-dir folder {blocker} is a file, not a folder"
    assert main(["test", config, missing, "--format-only"]) == 2
    assert "--format-only and --out-dir DIR go together" in capsys.readouterr().err


@pytest.mark.slow
def test_aug_test_flag_and_slide_mode_run_from_the_cli(trained) -> None:
    overrides, run_dir, train_metrics = trained["upernet"]
    checkpoint = str(run_dir / "checkpoints" / "best.ckpt")
    config = str(HEAD_CONFIGS["upernet"])
    assert main(["test", config, checkpoint, *overrides, "--aug-test"]) == 0
    aug = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert main(["test", config, checkpoint, *overrides, "evaluation.mode=slide"]) == 0
    slide = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    for metrics in (aug, slide):
        assert 0.0 <= metrics["test/mIoU"] <= 1.0
    # best.ckpt holds the weights of the one validation (whole image on the same split): the other
    # modes are really in effect, since an untrained network is not scale, flip or crop invariant
    whole = train_metrics["val/mIoU"]
    assert aug["test/mIoU"] != pytest.approx(whole) or slide["test/mIoU"] != pytest.approx(whole)


def test_infer_draws_an_overlay_at_the_image_size(trained, ade_root: Path, tmp_path: Path) -> None:
    overrides, run_dir, _ = trained["semantic_fpn"]
    image = sorted((ade_root / "images" / "validation").iterdir())[0]
    drawn = infer(
        HEAD_CONFIGS["semantic_fpn"],
        run_dir / "checkpoints" / "best.ckpt",
        [image],
        out_dir=tmp_path,
        overrides=overrides,
    )
    original, picture = read_rgb_image(image), read_rgb_image(drawn[0])
    assert picture.shape == original.shape and not torch.equal(picture, original)


def test_evaluation_section_errors_are_one_line() -> None:
    config = HEAD_CONFIGS["semantic_fpn"]
    with pytest.raises(ConfigError, match="evaluation.mode"):
        load_run(config, ["evaluation.mode=sliding"], create_run_dir=False)
    with pytest.raises(ConfigError, match="evaluation.windw"):
        load_run(config, ["+evaluation.windw=512"], create_run_dir=False)
    settings = EvaluationSettings.from_section({"window": [64, 32], "aug_scales": [1, 1.5]})
    assert settings.window == (64, 32) and settings.aug_scales == (1.0, 1.5)


@pytest.mark.parametrize("config", SEGMENTATION_CONFIGS, ids=lambda p: p.stem)
def test_every_segmentation_config_loads(config: Path) -> None:
    cfg = load_run(config, create_run_dir=False).cfg
    assert cfg.task == "segmentation" and cfg.model.backbone.get("pretrained") is None
    EvaluationSettings.from_section(dict(cfg.evaluation))
    if cfg.model.decode_head == "upernet":
        assert cfg.trainer.sync_batchnorm and cfg.model.aux_head and cfg.model.aux_weight == 0.4


@pytest.mark.parametrize(
    "config, paper_millions",
    [("sem_fpn_flatten_pvt_t_ade20k_40k", 16.0), ("upernet_flatten_swin_t_ade20k_160k", 60.0)],
)
def test_parameter_counts_match_the_paper(config: str, paper_millions: float) -> None:
    """mmseg counts the whole segmentor, UperNet's auxiliary FCN head included."""
    model = build_network(load_run(CONFIGS / "segmentation" / f"{config}.yaml", create_run_dir=False), num_classes=150)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(millions - paper_millions) / paper_millions < 0.03
