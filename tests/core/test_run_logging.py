"""Run logs outside a terminal (one line every N steps or seconds), no Lightning tips, run pictures."""

from __future__ import annotations

import io
import logging
import re

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from flatten_dense.core.config import kwargs_problems
from flatten_dense.core.prediction_pictures import PredictionPictures, tensorboard_available
from flatten_dense.core.run_logging import (
    RANK_ZERO_LOGGER,
    LineProgress,
    LoggingOptions,
    format_eta,
    silence_lightning_tips,
)


class _Images(Dataset):
    def __init__(self, count: int = 8) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        return torch.rand(3, 16, 16, generator=generator), torch.tensor(float(index))


def _collate(batch):
    return tuple(list(items) for items in zip(*batch))


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        features = torch.stack([image.mean(dim=(1, 2)) for image in images])
        return ((self.layer(features).squeeze(1) - torch.stack(targets)) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/score", float(batch_idx), batch_size=len(batch[0]))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _trainer(tmp_path, callbacks, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        callbacks=callbacks,
        **kwargs,
    )


def _loader(count: int = 8) -> DataLoader:
    return DataLoader(_Images(count), batch_size=2, collate_fn=_collate)


def test_line_progress_prints_at_the_configured_step_interval(tmp_path) -> None:
    stream = io.StringIO()
    progress = LineProgress(every_n_steps=3, every_n_seconds=3600, stream=stream)
    trainer = _trainer(tmp_path, [progress], max_steps=10, limit_val_batches=0)
    trainer.fit(_Tiny(), train_dataloaders=_loader(8))  # 4 batches an epoch, 10 steps
    lines = stream.getvalue().splitlines()
    train_lines = [line for line in lines if line.startswith("[train]")]
    assert [int(re.search(r"step (\d+)/", line).group(1)) for line in train_lines] == [3, 6, 9]
    pattern = r"\[train\] epoch \d+ step \d+/10 loss \d+\.\d{4} lr 1\.00e-02 [\d.]+ img/s eta \d+:\d\d:\d\d"
    assert all(re.fullmatch(pattern, line) for line in train_lines), train_lines
    assert "\r" not in stream.getvalue()


def test_line_progress_prints_every_n_seconds_and_validation_metrics(tmp_path) -> None:
    stream = io.StringIO()
    progress = LineProgress(every_n_steps=1000, every_n_seconds=1e-9, stream=stream)  # every step is due by time
    trainer = _trainer(tmp_path, [progress], max_epochs=1, num_sanity_val_steps=0)
    trainer.fit(_Tiny(), train_dataloaders=_loader(8), val_dataloaders=_loader(4))
    lines = stream.getvalue().splitlines()
    assert sum(line.startswith("[train]") for line in lines) == 4
    assert any(line.startswith("[val] batch 2/2") for line in lines)
    assert any(re.match(r"\[val\] epoch 1 step 4 val/score \d\.\d{4}", line) for line in lines), lines


def test_line_progress_is_silent_off_rank_zero(tmp_path, monkeypatch) -> None:
    stream = io.StringIO()
    progress = LineProgress(every_n_steps=1, stream=stream)
    trainer = _trainer(tmp_path, [progress], max_steps=2, limit_val_batches=0)
    monkeypatch.setattr(type(trainer), "is_global_zero", property(lambda self: False))
    trainer.fit(_Tiny(), train_dataloaders=_loader(8))
    assert stream.getvalue() == ""


def test_lightning_tips_are_dropped_and_other_messages_kept(caplog) -> None:
    silence_lightning_tips()
    logger = logging.getLogger(RANK_ZERO_LOGGER)
    with caplog.at_level(logging.INFO, logger=RANK_ZERO_LOGGER):
        logger.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
        logger.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]


def test_no_tip_at_trainer_init(tmp_path, capsys, caplog) -> None:
    LoggingOptions(progress="lines").callbacks({})
    with caplog.at_level(logging.INFO):
        L.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=True, enable_model_summary=False)
    printed = capsys.readouterr()
    assert "Tip" not in printed.out + printed.err + caplog.text


def test_logging_section_is_validated_and_chooses_the_display() -> None:
    problems = kwargs_problems(LoggingOptions, {"every_n_step": 5, "progress": "fancy"}, where="logging")
    assert problems[0].startswith("unknown key 'logging.every_n_step'") and "every_n_steps" in problems[0]
    assert problems[1].startswith("'logging.progress' must be")
    assert isinstance(LoggingOptions(progress="lines").progress_bar(), LineProgress)  # pytest's stdout: no tty
    assert type(LoggingOptions(progress="bar").progress_bar()).__name__ == "TQDMProgressBar"
    assert LoggingOptions().callbacks({"enable_progress_bar": False}) == []
    kinds = [type(c).__name__ for c in LoggingOptions(pictures=2).callbacks({}, draw=lambda *a: None, pictures_dir=".")]
    assert kinds == ["LineProgress", "PredictionPictures"]
    assert format_eta(3725.2) == "1:02:05" and format_eta(float("inf")) == "?"


def _draw(module, image, score_threshold):
    assert not module.training  # drawn in eval mode
    return (image * 255).to(torch.uint8)


def test_prediction_pictures_written_at_every_validation(tmp_path) -> None:
    pictures = PredictionPictures(_draw, tmp_path / "pictures", num_images=3)
    trainer = _trainer(tmp_path, [pictures], max_epochs=2, num_sanity_val_steps=1, enable_progress_bar=False)
    trainer.fit(_Tiny(), train_dataloaders=_loader(4), val_dataloaders=_loader(6))
    written = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert written == ["epoch_000.png", "epoch_001.png"]  # not the sanity check
    if tensorboard_available():
        assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_a_configs_logging_section_is_checked_at_load_time(tmp_path) -> None:
    from flatten_dense.commands.build import build_trainer, load_run
    from flatten_dense.core.config import ConfigError

    config = "configs/detection/demo_mask_rcnn_flatten_pvt_v2_b0_synthetic.yaml"
    where = [f"data.root={tmp_path}", f"trainer.default_root_dir={tmp_path / 'run'}"]
    with pytest.raises(ConfigError, match=r"unknown key 'logging.every_n_step' \(did you mean 'every_n_steps'\?\)"):
        load_run(config, [*where, "logging.every_n_step=5"], create_run_dir=False)
    run = load_run(config, [*where, "logging.every_n_steps=5", "logging.progress=lines"], create_run_dir=False)
    trainer = build_trainer(run)
    lines = [c for c in trainer.callbacks if isinstance(c, LineProgress)]
    assert len(lines) == 1 and lines[0].every_n_steps == 5
    pictures = [c for c in trainer.callbacks if isinstance(c, PredictionPictures)]
    assert len(pictures) == 1 and pictures[0].out_dir == tmp_path / "run" / "pictures"
