"""A Lightning DDP job for tests/integrations/test_lightning.py: records which samples each rank trains on.

Run as ``python tests/integrations/lightning_job.py CONFIG OUT_DIR MODE [CHECKPOINT_DIR]``; Lightning's ``ddp``
strategy starts the second rank by running this script again. ``AHI_JOB_DEVICES`` sets the number
of ranks (2 by default). MODE is ``full`` (two epochs; with
CHECKPOINT_DIR it saves ``mid.ckpt`` after step 6, in the middle of epoch 1) or ``resume``
(continue from CHECKPOINT_DIR/mid.ckpt to the end of epoch 1).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ahi_torch.integrations.lightning import AHIDataModule


class Recorder(pl.LightningModule):
    """A one-parameter model that writes (epoch, rank, sample indices) for every batch."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.out = out

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        record = {
            "epoch": self.current_epoch,
            "step": self.global_step,
            "rank": self.global_rank,
            "world": self.trainer.world_size,
            "indices": batch["meta"]["index"].tolist(),
            "sampler": type(self.trainer.train_dataloader.sampler).__name__,
        }
        with (self.out / f"rank{self.global_rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return (self.weight * batch["image"].mean()).sum() + self.weight.square().sum()

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    config, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    checkpoints = Path(sys.argv[4]) if len(sys.argv) > 4 else None
    out.mkdir(parents=True, exist_ok=True)
    data = AHIDataModule.from_config(config)
    mid_epoch = ModelCheckpoint(dirpath=checkpoints, filename="mid", every_n_train_steps=6, save_top_k=-1)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(os.environ.get("AHI_JOB_DEVICES", "2")),  # a resume may run on fewer or more
        strategy="ddp",
        max_epochs=2,
        logger=False,
        callbacks=[mid_epoch] if checkpoints and mode == "full" else [],
        enable_checkpointing=bool(checkpoints and mode == "full"),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    resume = str(checkpoints / "mid.ckpt") if checkpoints and mode == "resume" else None
    trainer.fit(Recorder(out), datamodule=data, ckpt_path=resume)
    if trainer.global_rank == 0:
        (out / f"done-{mode}").write_text(str(os.getpid()))


if __name__ == "__main__":
    main()
