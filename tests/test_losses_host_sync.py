"""The losses never read a tensor value on the host (no GPU needed to check it).

``torch.cuda.set_sync_debug_mode`` needs a GPU. Instead every loss runs, forward and backward,
on ``meta`` tensors, which have shapes but no data: ``.item()``, ``.tolist()``, ``.cpu()``,
``nonzero``, boolean-mask indexing and ``if tensor:`` all raise there, exactly the operations
that would force a device-to-host synchronisation on a GPU. A source grep backs this up.
"""

from __future__ import annotations

import re
import tokenize
from pathlib import Path

import pytest
import torch

import action_ray.losses as losses_package
from action_ray.losses import (
    ClassKeyBank,
    anatomical_contrast_loss,
    global_distillation_loss,
    local_distillation_loss,
    mean_teacher_consistency,
    pseudo_label_loss,
    supervised_loss,
)

META = torch.device("meta")


def _meta(*shape, dtype=torch.float32, grad=False):
    return torch.empty(*shape, device=META, dtype=dtype, requires_grad=grad)


def _labels(*shape):
    return torch.empty(*shape, device=META, dtype=torch.long)


def _loss_calls():
    rep = _meta(2, 8, 6, 6, grad=True)
    onehot, probs = _meta(2, 4, 6, 6), _meta(2, 4, 6, 6)
    valid = _meta(2, 6, 6)
    return {
        "supervised_2d": lambda: supervised_loss(_meta(2, 4, 8, 8, grad=True), _labels(2, 8, 8)),
        "supervised_3d": lambda: supervised_loss(_meta(1, 3, 4, 4, 4, grad=True),
                                                 _labels(1, 4, 4, 4)),
        "global": lambda: global_distillation_loss(_meta(6, 16, grad=True),
                                                   _meta(6, 16, grad=True), _meta(36, 16),
                                                   detach_target=False),
        "local_per_position": lambda: local_distillation_loss(
            _meta(9, 6, 16, grad=True), _meta(9, 6, 16), _meta(36, 9, 16)),
        "local_faithful": lambda: local_distillation_loss(
            _meta(9, 6, 16, grad=True), _meta(9, 6, 16), _meta(36, 9, 16), layout="faithful"),
        "pseudo_label": lambda: pseudo_label_loss(_meta(2, 4, 8, 8, grad=True), _labels(2, 8, 8),
                                                  _meta(2, 8, 8)),
        "mean_teacher": lambda: mean_teacher_consistency(_meta(2, 4, 8, 8, grad=True),
                                                         _meta(2, 4, 8, 8)),
        "anatomical_contrast": lambda: anatomical_contrast_loss(
            rep, onehot, valid, probs, num_queries=16, num_negatives=32),
        "anatomical_contrast_chunked": lambda: anatomical_contrast_loss(
            rep, onehot, valid, probs, num_queries=16, num_negatives=32, max_key_elements=600),
        "anatomical_contrast_gather": lambda: anatomical_contrast_loss(
            rep, onehot, valid, probs, num_queries=16, num_negatives=32, negative_path="gather"),
        "anatomical_contrast_gather_chunked": lambda: anatomical_contrast_loss(
            rep, onehot, valid, probs, num_queries=16, num_negatives=32, max_key_elements=600,
            negative_path="gather"),
        "anatomical_contrast_bank": lambda: anatomical_contrast_loss(
            rep, onehot, valid, probs, num_queries=16, num_negatives=32,
            negative_keys=ClassKeyBank(_meta(4, 10, 8), _labels(4))),
    }


@pytest.mark.parametrize("name", sorted(_loss_calls()))
def test_loss_runs_forward_and_backward_on_meta_tensors(name):
    loss = _loss_calls()[name]()
    assert loss.device == META and loss.shape == ()
    loss.backward()


@pytest.mark.parametrize(
    "syncing",
    [
        lambda x: x * x.sum().item(),
        lambda x: x[x > 0].sum(),
        lambda x: x * (2 if x.sum() > 0 else 1),
        lambda x: x.cpu() * 2,
        lambda x: x * len(x.tolist()),
    ],
)
def test_meta_check_catches_host_reads(syncing):
    """The check above can fail: each of these reads data on the host."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        syncing(_meta(4))


HOST_READS = re.compile(r"\.item\(|\.cpu\(|\.tolist\(|\.numpy\(|nonzero\(|masked_select\(")


def _code_without_strings_and_comments(path: Path) -> list[tuple[int, str]]:
    """(line number, code token) pairs; docstrings and comments may mention ``.item()``."""
    with path.open("rb") as handle:
        return [
            (token.start[0], token.string)
            for token in tokenize.tokenize(handle.readline)
            if token.type not in (tokenize.STRING, tokenize.COMMENT)
        ]


def test_loss_sources_contain_no_host_reads():
    sources = sorted(Path(losses_package.__file__).parent.glob("*.py"))
    assert len(sources) >= 6
    offenders = []
    for path in sources:
        lines: dict[int, str] = {}
        for number, text in _code_without_strings_and_comments(path):
            lines[number] = lines.get(number, "") + text
        offenders += [f"{path.name}:{n}: {code}" for n, code in lines.items()
                      if HOST_READS.search(code)]
    assert offenders == []


def test_losses_never_import_ray():
    for path in Path(losses_package.__file__).parent.glob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+ray\b", path.read_text(), re.M), path.name
