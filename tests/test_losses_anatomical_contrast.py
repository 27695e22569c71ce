"""Anatomical contrast L_anco (method.md §4.4): exact value given the draws, and the draws'
distributions (chi-square tests with fixed seeds)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from action_ray.losses import ClassKeyBank, anatomical_contrast_loss
from action_ray.losses.anatomical_contrast import MATMUL_KEYS_PER_NEGATIVE, use_matmul_path

P_VALUE_FLOOR = 1e-3


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_batch(num_images=3, dim=5, spatial=(6, 7), num_classes=4, seed=0,
               dtype=torch.float64, confident_class=None):
    """Random representations, labels, a validity mask and probabilities.

    The representations carry a class-dependent offset, so prototypes differ and π is far
    from uniform. ``confident_class`` gets probability 0.99 everywhere (no hard pixels).
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_classes, (num_images,) + spatial, generator=gen)
    onehot = torch.nn.functional.one_hot(labels, num_classes).movedim(-1, 1).to(dtype)
    centres = torch.randn(num_classes, dim, generator=gen, dtype=dtype) * 2
    rep = torch.randn((num_images, dim) + spatial, generator=gen, dtype=dtype)
    rep = rep + torch.einsum("nc...,cd->nd...", onehot, centres)
    valid = (torch.rand((num_images,) + spatial, generator=gen) > 0.25).to(dtype)
    probs = torch.rand((num_images, num_classes) + spatial, generator=gen, dtype=dtype)
    if confident_class is not None:
        probs[:, confident_class] = 0.99
    return rep, onehot, valid, probs


def _flat_pixels(num_images, spatial):
    """Flat pixel order of the implementation: image-major, then row-major spatial."""
    return [(n,) + p for n in range(num_images)
            for p in itertools.product(*(range(s) for s in spatial))]


def reference_loss_from_samples(rep, onehot, valid, probs, samples, threshold, tau,
                                bank=None):
    """L_anco written from §4.4 with loops, using the implementation's draws.

    Also checks that every draw is a legal one: queries in H_c, negative classes present and
    different from c, negative pixels in A_c' (or filled bank rows of c').
    """
    num_images, dim = rep.shape[:2]
    num_classes = onehot.shape[1]
    pixels = _flat_pixels(num_images, rep.shape[2:])
    rows = [[rep[(p[0], d) + p[1:]].item() for d in range(dim)] for p in pixels]
    anchor = {c: [i for i, p in enumerate(pixels)
                  if onehot[(p[0], c) + p[1:]] == 1 and valid[p] != 0]
              for c in range(num_classes)}
    hard = {c: [i for i in anchor[c] if probs[(pixels[i][0], c) + pixels[i][1:]] < threshold]
            for c in range(num_classes)}
    present = [c for c in range(num_classes) if anchor[c]]
    prototype = {c: [sum(rows[i][d] for i in anchor[c]) / len(anchor[c]) for d in range(dim)]
                 for c in present}

    def cos(a, b):
        return (sum(x * y for x, y in zip(a, b))
                / math.sqrt(sum(x * x for x in a)) / math.sqrt(sum(y * y for y in b)))

    assert samples.num_present.item() == len(present)
    total = 0.0
    for c in range(num_classes):
        used = c in present and len(hard[c]) > 0 and len(present) > 1
        if bank is not None:
            used = used and any(bank.counts[k] > 0 for k in present if k != c)
        assert bool(samples.class_used[c]) == used, f"class {c}"
        if not used:
            continue
        per_query = []
        for m, q in enumerate(samples.query_index[c].tolist()):
            assert q in hard[c], "query outside H_c"
            pos = cos(rows[q], prototype[c]) / tau
            logits = [pos]
            for k_class, k in zip(samples.negative_class[c, m].tolist(),
                                  samples.negative_index[c, m].tolist()):
                assert k_class != c and k_class in present
                if bank is None:
                    assert k in anchor[k_class], "negative outside A_c'"
                    key = rows[k]
                else:
                    capacity = bank.keys.shape[1]
                    assert k // capacity == k_class and k % capacity < bank.counts[k_class]
                    key = bank.keys[k_class, k % capacity].tolist()
                logits.append(cos(rows[q], key) / tau)
            top = max(logits)
            log_den = top + math.log(sum(math.exp(v - top) for v in logits))
            per_query.append(log_den - pos)
        total += sum(per_query) / len(per_query)
    return total / max(len(present), 1)


PATHS = ("gather", "matmul")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("spatial", [(6, 7), (3, 4, 5)])
def test_loss_matches_reference_given_the_draws(spatial, path):
    rep, onehot, valid, probs = make_batch(spatial=spatial, seed=1, confident_class=2)
    gen = torch.Generator().manual_seed(5)
    loss, samples = anatomical_contrast_loss(
        rep, onehot, valid, probs, strong_threshold=0.97, temperature=0.5, num_queries=6,
        num_negatives=10, generator=gen, return_samples=True, negative_path=path,
    )
    # class 2 has no hard pixel: skipped, yet counted in n
    assert not samples.class_used[2] and samples.num_present.item() == 4
    expected = reference_loss_from_samples(rep, onehot, valid, probs, samples, 0.97, 0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("path", PATHS)
def test_bank_negatives_match_reference(path):
    rep, onehot, valid, probs = make_batch(seed=2)
    gen = torch.Generator().manual_seed(6)
    keys = torch.randn(4, 9, 5, generator=gen, dtype=torch.float64)
    bank = ClassKeyBank(keys, torch.tensor([4, 0, 9, 2]))
    loss, samples = anatomical_contrast_loss(
        rep, onehot, valid, probs, num_queries=5, num_negatives=12, generator=gen,
        negative_keys=bank, return_samples=True, negative_path=path,
    )
    assert not (samples.negative_class[samples.class_used] == 1).any(), "class 1 bank is empty"
    expected = reference_loss_from_samples(rep, onehot, valid, probs, samples, 0.97, 0.5,
                                           bank=bank)
    assert loss.item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("path", PATHS)
def test_chunked_negative_logits_give_the_same_loss_and_gradient(path):
    rep, onehot, valid, probs = make_batch(seed=3, dtype=torch.float64)
    results = []
    for budget in (2**26, 37):  # one chunk / many (checkpointed) chunks
        leaf = rep.clone().requires_grad_()
        loss = anatomical_contrast_loss(leaf, onehot, valid, probs, num_queries=7,
                                        num_negatives=11, max_key_elements=budget,
                                        generator=torch.Generator().manual_seed(9),
                                        negative_path=path)
        loss.backward()
        results.append((loss.detach(), leaf.grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-12, atol=0)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("path", PATHS)
def test_gradient_reaches_only_the_sampled_queries(path):
    rep, onehot, valid, probs = make_batch(seed=4, confident_class=1)
    rep.requires_grad_()
    loss, samples = anatomical_contrast_loss(
        rep, onehot, valid, probs, num_queries=8, num_negatives=16,
        generator=torch.Generator().manual_seed(2), return_samples=True, negative_path=path,
    )
    loss.backward()
    pixel_has_grad = (rep.grad != 0).any(dim=1).reshape(-1)
    query_pixels = torch.zeros_like(pixel_has_grad)
    query_pixels[samples.query_index[samples.class_used].reshape(-1)] = True
    assert torch.equal(pixel_has_grad, query_pixels)
    # class 1 has no hard pixel, so none of its draws may leak a gradient
    assert samples.query_index[samples.class_used].numel() == 3 * 8


def test_fewer_than_two_classes_gives_a_zero_that_keeps_the_graph():
    rep, onehot, valid, probs = make_batch(seed=5)
    onehot = torch.zeros_like(onehot)
    onehot[:, 3] = 1.0  # a single class present
    rep.requires_grad_()
    loss = anatomical_contrast_loss(rep, onehot, valid, probs, num_queries=4, num_negatives=4)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(rep.grad == 0)


def test_hard_queries_are_exactly_the_unconfident_valid_pixels():
    rep, onehot, valid, probs = make_batch(num_images=2, spatial=(7, 7), seed=6,
                                           dtype=torch.float32)
    _, samples = anatomical_contrast_loss(
        rep, onehot, valid, probs, strong_threshold=0.6, num_queries=3000, num_negatives=1,
        generator=torch.Generator().manual_seed(3), return_samples=True,
    )
    labels = onehot.argmax(dim=1).reshape(-1)
    valid_flat = valid.reshape(-1) != 0
    for c in range(4):
        own_prob = probs[:, c].reshape(-1)
        hard_set = set(torch.nonzero(valid_flat & (labels == c) & (own_prob < 0.6))
                       .reshape(-1).tolist())
        drawn = samples.query_index[c].tolist()
        assert len(hard_set) > 5, "test data should give every class several hard pixels"
        assert set(drawn) == hard_set, f"class {c}: queries must cover exactly H_c"
        counts = np.bincount(drawn, minlength=labels.numel())[sorted(hard_set)]
        assert chisquare(counts).pvalue > P_VALUE_FLOOR, f"class {c}: queries not uniform"


def _pi_from_formula(rep, onehot, valid, tau):
    """π_c(c') = softmax over present c' != c of cos(r̄_c, r̄_c')/τ, in float64 NumPy."""
    num_images, dim = rep.shape[:2]
    rep_np = rep.detach().double().numpy().reshape(num_images, dim, -1)
    mask = onehot.double().numpy() * valid.double().numpy()[:, None]
    mask = mask.reshape(num_images, onehot.shape[1], -1)
    sums = np.einsum("ncx,ndx->cd", mask, rep_np)
    counts = mask.sum(axis=(0, 2))
    proto = sums / counts[:, None]
    unit = proto / np.linalg.norm(proto, axis=1, keepdims=True)
    logits = unit @ unit.T / tau
    np.fill_diagonal(logits, -np.inf)
    logits = logits - logits.max(axis=1, keepdims=True)
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_negative_class_frequencies_match_pi():
    rep, onehot, valid, probs = make_batch(num_images=2, spatial=(8, 8), seed=7,
                                           dtype=torch.float32)
    _, samples = anatomical_contrast_loss(
        rep, onehot, valid, probs, num_queries=256, num_negatives=512,
        generator=torch.Generator().manual_seed(4), return_samples=True,
    )
    pi = _pi_from_formula(rep, onehot, valid, 0.5)
    np.testing.assert_allclose(samples.negative_class_probs.double().numpy(), pi, rtol=1e-4,
                               atol=1e-7)
    assert pi.max() > 2 * pi[pi > 0].min(), "test data should make π clearly non-uniform"
    for c in range(4):
        drawn = samples.negative_class[c].reshape(-1).numpy()
        counts = np.bincount(drawn, minlength=4)
        assert counts[c] == 0, "a class is never its own negative"
        others = [k for k in range(4) if k != c]
        expected = pi[c, others] * drawn.size
        assert chisquare(counts[others], expected).pvalue > P_VALUE_FLOOR, f"class {c}"


def test_negative_pixels_are_uniform_within_their_class():
    rep, onehot, valid, probs = make_batch(num_images=2, spatial=(6, 6), seed=8,
                                           dtype=torch.float32)
    _, samples = anatomical_contrast_loss(
        rep, onehot, valid, probs, num_queries=256, num_negatives=512,
        generator=torch.Generator().manual_seed(5), return_samples=True,
    )
    labels = onehot.argmax(dim=1).reshape(-1)
    valid_flat = valid.reshape(-1) != 0
    negative_class = samples.negative_class.reshape(-1)
    negative_index = samples.negative_index.reshape(-1)
    for c in range(4):
        members = torch.nonzero(valid_flat & (labels == c)).reshape(-1)
        drawn = negative_index[negative_class == c]
        assert drawn.numel() > 50 * members.numel()
        counts = torch.bincount(drawn, minlength=labels.numel())
        outside = counts.sum() - counts[members].sum()
        assert outside.item() == 0, f"negatives of class {c} outside A_c"
        assert chisquare(counts[members].numpy()).pvalue > P_VALUE_FLOOR, f"class {c}"


def test_same_generator_seed_reproduces_the_loss():
    rep, onehot, valid, probs = make_batch(seed=9)
    first = anatomical_contrast_loss(rep, onehot, valid, probs, num_queries=5,
                                     num_negatives=7, generator=torch.Generator().manual_seed(1))
    again = anatomical_contrast_loss(rep, onehot, valid, probs, num_queries=5,
                                     num_negatives=7, generator=torch.Generator().manual_seed(1))
    other = anatomical_contrast_loss(rep, onehot, valid, probs, num_queries=5,
                                     num_negatives=7, generator=torch.Generator().manual_seed(2))
    assert first.item() == again.item() != other.item()


def test_bad_inputs_raise_with_names():
    rep, onehot, valid, probs = make_batch(seed=10)
    with pytest.raises(ValueError, match="valid_mask"):
        anatomical_contrast_loss(rep, onehot, valid[:, :3], probs)
    with pytest.raises(ValueError, match="probs"):
        anatomical_contrast_loss(rep, onehot, valid, probs[:, :3])
    with pytest.raises(ValueError, match="num_negatives"):
        anatomical_contrast_loss(rep, onehot, valid, probs, num_negatives=0)
    with pytest.raises(ValueError, match="negative_keys.keys"):
        anatomical_contrast_loss(rep, onehot, valid, probs,
                                 negative_keys=ClassKeyBank(torch.zeros(4, 3, 2),
                                                            torch.zeros(4, dtype=torch.long)))


def test_bfloat16_representations_compute_in_float32():
    rep, onehot, valid, probs = make_batch(seed=11, dtype=torch.float32)
    low = rep.to(torch.bfloat16).requires_grad_()
    loss = anatomical_contrast_loss(low, onehot, valid, probs, num_queries=8, num_negatives=16,
                                    generator=torch.Generator().manual_seed(1))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert low.grad.dtype == torch.bfloat16 and torch.isfinite(low.grad.float()).all()
    exact = anatomical_contrast_loss(low.detach().float(), onehot, valid, probs, num_queries=8,
                                     num_negatives=16, generator=torch.Generator().manual_seed(1))
    assert loss.item() == pytest.approx(exact.item(), rel=1e-5)


@pytest.mark.parametrize("bank", [False, True])
def test_matmul_and_gather_paths_agree_in_float32(bank):
    """The two ways of computing the negative logits give the same loss and query gradients
    (float32, sizes where the chunking of both paths is exercised)."""
    rep, onehot, valid, probs = make_batch(num_images=4, dim=16, spatial=(12, 12), seed=12,
                                           dtype=torch.float32)
    keys = ClassKeyBank(torch.randn(4, 50, 16, generator=torch.Generator().manual_seed(1)),
                        torch.tensor([50, 7, 0, 31])) if bank else None
    results = {}
    for path in PATHS:
        leaf = rep.clone().requires_grad_()
        loss = anatomical_contrast_loss(leaf, onehot, valid, probs, num_queries=32,
                                        num_negatives=64, negative_keys=keys,
                                        generator=torch.Generator().manual_seed(3),
                                        max_key_elements=20_000, negative_path=path)
        loss.backward()
        results[path] = (loss.detach(), leaf.grad)
    (loss_g, grad_g), (loss_m, grad_m) = results["gather"], results["matmul"]
    assert loss_g > 0
    torch.testing.assert_close(loss_m, loss_g, rtol=1e-5, atol=0)
    torch.testing.assert_close(grad_m, grad_g, rtol=1e-5, atol=1e-7)
    assert torch.equal(grad_m != 0, grad_g != 0)


def test_auto_path_follows_the_size_rule():
    ratio = MATMUL_KEYS_PER_NEGATIVE
    assert use_matmul_path(ratio * 512, 512) and not use_matmul_path(ratio * 512 + 1, 512)
    assert use_matmul_path(4 * 64 * 64, 512)  # bench step --preset paper --size 64 --batch 2
    assert not use_matmul_path(8 * 256 * 256, 512)  # paper FT batch: gather
    assert use_matmul_path(10, 10**6, "matmul") is True
    assert use_matmul_path(1, 1, "gather") is False
    rep, onehot, valid, probs = make_batch(seed=13)
    with pytest.raises(ValueError, match="negative_path"):
        anatomical_contrast_loss(rep, onehot, valid, probs, negative_path="dense")
