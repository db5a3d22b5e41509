"""Checkpoints in the official layout, for the tests that write and load them."""

from __future__ import annotations

import torch

from fcclip_ros.model.fcclip import FCCLIP

NUM_TRAIN_CLASSES = 133  # COCO panoptic, the training vocabulary of every released model


def official_state_dict(model: FCCLIP) -> dict[str, torch.Tensor]:
    """The model's weights as the official training run saves them (detectron2's "model"),
    with the loss's class weights (`criterion.empty_weight`: 1 per training class, 0.1 for
    void), which inference never uses."""
    state = dict(model.state_dict())
    empty_weight = torch.ones(NUM_TRAIN_CLASSES + 1)
    empty_weight[-1] = 0.1
    state["criterion.empty_weight"] = empty_weight
    return state
