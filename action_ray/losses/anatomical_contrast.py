"""Anatomical contrast L_anco (ReCo regional contrast), method.md §4.4, vectorised.

The published step loops over classes, queries and negatives in Python, moves indices to the
host and samples with NumPy; it is the hot spot of fine-tuning. Here every class is handled at
once on the representations' device and nothing reads a tensor value on the host:

1. A_c (valid pixels of class c) and H_c (those with P_c < δ_s) are (C, X) boolean masks over
   the X = N·prod(S) pixels of the batch; prototypes r̄_c are masked means, one matmul.
2. M queries per class are drawn uniformly from H_c (inverse CDF over the mask).
3. For each query, NEG negative classes are drawn from π_c = softmax over present c' ≠ c of
   cos(r̄_c, r̄_c')/τ, then one pixel uniformly from A_c' per draw (or one entry of a class-wise
   key bank, ``negative_keys``).
4. ℓ_c = mean over queries of the InfoNCE loss with cosine logits, positive r̄_c (no grad),
   negatives without grad; L = Σ over classes with hard pixels of ℓ_c / n_present, and 0 (still
   attached to the graph) when fewer than two classes are present.

Classes that cannot be processed (absent, or without hard pixels) still draw samples from a
placeholder distribution; their ℓ_c is replaced by 0 with ``torch.where``, which avoids any
data-dependent control flow. Gradients reach ``rep`` only at the sampled query pixels.

Negative logits, two exact ways (``negative_path``; the default ``"auto"`` picks by size):

* ``"gather"``: gather the C·M·NEG negative key rows and take one dot product each. At paper
  size (4·256·512 keys of 512 floats) that is 1 GiB of scattered reads, so it runs in chunks of
  at most ``max_key_elements`` gathered values, each under activation checkpointing so that its
  keys are re-gathered in backward instead of being kept alive.
* ``"matmul"``: one matmul of the queries with the whole key table, (C·M, D) @ (D, X), then a
  ``gather`` of each query's NEG logits. It computes X dot products per query instead of NEG,
  but as a dense matmul, which is far faster per dot product than scattered row reads; query
  chunks keep each (rows, X) logit block under ``max_key_elements`` values, and nothing of
  that block is kept for backward (the gather saves only its indices).

Both cost ∝ D per dot product, so the rule depends only on X / NEG: ``"auto"`` takes the matmul
when the table has at most ``MATMUL_KEYS_PER_NEGATIVE`` × NEG rows (a batch of small slices,
or the class-wise key bank) and the gather otherwise (paper-sized batches: X = 8·256² rows is
1024 × NEG; there the matmul would do 1000× the dot products). In both, keys are detached: the gradient reaches only the queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint

from ._tensors import check_positive, check_rank_at_least, check_same_shape, compute_dtype
from ._tensors import unit_vectors
from .sampling import categorical, uniform_below, uniform_from_masks

DEFAULT_MAX_KEY_ELEMENTS = 2**26  # 256 MiB of float32 negative keys / logits at a time
#: ``negative_path="auto"`` uses the matmul when key rows X <= this × NEG. Measured on a shared
#: 2-core CPU, forward + backward, one thread: at X = 32·NEG the matmul was 1.8-6.5× faster
#: for D in {64, 128, 512}, NEG in {128, 512}, 256-1024 queries; the break-even point lay
#: between 40 and 100 × NEG depending on D and on how much the gather spills out of cache.
MATMUL_KEYS_PER_NEGATIVE = 32
NEGATIVE_PATHS = ("auto", "gather", "matmul")


class ClassKeyBank(NamedTuple):
    """A class-wise bank of pixel keys to draw anatomical-contrast negatives from.

    ``keys[c, :counts[c]]`` are the filled entries of class c (a ring buffer fills its rows in
    order and stays full once it has wrapped), e.g.
    ``ClassKeyBank(pixel_bank.keys, pixel_bank.filled)`` for an ``action_ray.bank.ClassPixelBank``.

    Attributes:
        keys: (C, Kc, D) pixel representations (read as constants).
        counts: (C,) long, number of filled rows per class, 0 <= counts[c] <= Kc.
    """

    keys: torch.Tensor
    counts: torch.Tensor


@dataclass(frozen=True)
class ContrastSamples:
    """The random choices behind one anatomical-contrast evaluation (for tests and diagnostics).

    Attributes:
        query_index: (C, M) flat pixel index into the N·prod(S) batch pixels (image-major).
        negative_class: (C, M, NEG) class c' of every negative.
        negative_index: (C, M, NEG) flat pixel index of every negative (batch negatives) or
            flat row index into ``keys.reshape(C·Kc, D)`` (bank negatives).
        negative_class_probs: (C, C) π; row c is zero when c has no negative candidate.
        class_used: (C,) bool, classes whose ℓ_c enters the sum.
        num_present: () long, n = number of classes with at least one valid pixel.
    """

    query_index: torch.Tensor
    negative_class: torch.Tensor
    negative_index: torch.Tensor
    negative_class_probs: torch.Tensor
    class_used: torch.Tensor
    num_present: torch.Tensor


def _pixels_by_class(per_image: torch.Tensor) -> torch.Tensor:
    """(N, K, *S) -> (K, N·prod(S)): one row per channel, pixels image-major."""
    num_images, channels = per_image.shape[:2]
    return per_image.reshape(num_images, channels, -1).transpose(0, 1).reshape(channels, -1)


def class_masks(
    labels_onehot: torch.Tensor,
    valid_mask: torch.Tensor,
    probs: torch.Tensor,
    strong_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor sets A_c and hard sets H_c as (C, X) boolean masks, X = N·prod(S).

    A_c = {x: label_c(x) = 1 and valid(x)}; H_c = {x in A_c: P_c(x) < strong_threshold}.
    """
    anchors = _pixels_by_class(labels_onehot != 0) & (valid_mask != 0).reshape(1, -1)
    hard = anchors & (_pixels_by_class(probs.detach()) < strong_threshold)
    return anchors, hard


def negative_class_probabilities(
    prototypes: torch.Tensor, candidates: torch.Tensor, temperature: float
) -> torch.Tensor:
    """π of §4.4: row c = softmax over candidate c' ≠ c of cos(r̄_c, r̄_c') / τ.

    Args:
        prototypes: (C, D) class mean representations.
        candidates: (C,) bool, classes that may provide negatives.
    Returns:
        (C, C) probabilities; zero on the diagonal, on non-candidates, and on whole rows
        without any candidate.
    """
    num_classes = prototypes.shape[0]
    unit = unit_vectors(prototypes.detach().to(compute_dtype(prototypes)))
    logits = unit @ unit.T / temperature
    eye = torch.eye(num_classes, dtype=torch.bool, device=prototypes.device)
    allowed = candidates.unsqueeze(0) & ~eye
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=1)
    return torch.where(allowed.any(dim=1, keepdim=True), probs, torch.zeros_like(probs))


def _key_table(rep: torch.Tensor, negative_keys: ClassKeyBank | None) -> torch.Tensor:
    """(rows, D) detached table the negative indices point into (batch pixels or bank rows)."""
    if negative_keys is None:
        dim = rep.shape[1]
        # a view when rep is channels-last, otherwise one copy without autograd history
        return rep.detach().movedim(1, -1).reshape(-1, dim)
    return negative_keys.keys.detach().reshape(-1, negative_keys.keys.shape[-1])


def _prototypes(anchors: torch.Tensor, pixel_rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Masked means r̄_c: (C, X) masks, (X, D) pixel table -> (C, D) (0 for empty classes)."""
    sums = anchors.to(dtype) @ pixel_rows.to(dtype)
    counts = anchors.sum(dim=1, keepdim=True).clamp(min=1).to(dtype)
    return sums / counts


def sample_contrast(
    anchors: torch.Tensor,
    hard: torch.Tensor,
    prototypes: torch.Tensor,
    temperature: float,
    num_queries: int,
    num_negatives: int,
    generator: torch.Generator | None = None,
    negative_keys: ClassKeyBank | None = None,
) -> ContrastSamples:
    """Draw queries, negative classes and negative keys for every class at once.

    With ``negative_keys``, a class can give negatives only if it is present in the batch (π
    needs its prototype) *and* has filled bank rows; a class left without any candidate is
    skipped but, as for classes without hard pixels, still counts in n.

    Args:
        anchors: (C, X) bool A_c.
        hard: (C, X) bool H_c.
        prototypes: (C, D) r̄_c.
        negative_keys: a :class:`ClassKeyBank` to draw negatives from, or None for the batch.
    Returns:
        :class:`ContrastSamples`.
    """
    num_classes = anchors.shape[0]
    present = anchors.any(dim=1)
    num_present = present.sum()

    query_rows = torch.arange(num_classes, device=anchors.device).unsqueeze(1)
    query_index = uniform_from_masks(hard, query_rows.expand(num_classes, num_queries), generator)

    candidates = present if negative_keys is None else present & (negative_keys.counts > 0)
    pi = negative_class_probabilities(prototypes, candidates, temperature)
    negative_class = categorical(pi, num_queries * num_negatives, generator)
    negative_class = negative_class.reshape(num_classes, num_queries, num_negatives)
    if negative_keys is None:
        negative_index = uniform_from_masks(anchors, negative_class, generator)
    else:
        capacity = negative_keys.keys.shape[1]
        within_class = uniform_below(negative_keys.counts[negative_class], generator)
        negative_index = negative_class * capacity + within_class

    class_used = present & hard.any(dim=1) & (num_present > 1) & (pi.sum(dim=1) > 0)
    return ContrastSamples(query_index, negative_class, negative_index, pi, class_used,
                           num_present)


def _negative_logits(
    queries: torch.Tensor,
    negative_index: torch.Tensor,
    key_table: torch.Tensor,
    key_inverse_norms: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """cos(q_r, key_{r,n}) / τ for (R, D) unit queries and (R, NEG) key rows -> (R, NEG)."""
    rows, num_negatives = negative_index.shape
    flat_index = negative_index.reshape(-1)
    keys = key_table.index_select(0, flat_index).to(queries.dtype)  # (R·NEG, D)
    keys = keys.reshape(rows, num_negatives, -1)
    dots = torch.bmm(keys, queries.unsqueeze(-1)).squeeze(-1)  # (R, NEG)
    inverse_norms = key_inverse_norms.index_select(0, flat_index).reshape(rows, num_negatives)
    return dots * inverse_norms / temperature


def _matmul_negative_logits(
    queries: torch.Tensor,
    negative_index: torch.Tensor,
    key_table: torch.Tensor,
    key_inverse_norms: torch.Tensor,
    temperature: float,
    max_key_elements: int,
) -> torch.Tensor:
    """Same values as :func:`_negative_logits`, from all query·key dot products at once.

    (R, D) unit queries @ (D, X) keys -> (R, X), then each row's NEG entries are gathered:
    -> (R, NEG). Row chunks keep every (rows, X) block within ``max_key_elements`` values;
    the chunk count depends only on shapes. Backward scatters the NEG gradients into a
    (rows, X) block and multiplies by the keys: again one dense matmul per chunk.
    """
    rows = negative_index.shape[0]
    keys = key_table.to(queries.dtype)  # (X, D), detached
    rows_per_chunk = max(1, max_key_elements // max(1, keys.shape[0]))
    chunks = []
    for start in range(0, rows, rows_per_chunk):
        stop = min(rows, start + rows_per_chunk)
        index = negative_index[start:stop]
        dots = (queries[start:stop] @ keys.T).gather(1, index)  # (rows, NEG)
        chunks.append(dots * key_inverse_norms[index] / temperature)
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=0)


def use_matmul_path(key_rows: int, num_negatives: int, negative_path: str = "auto") -> bool:
    """True when the negative logits should come from one matmul over the whole key table.

    ``"auto"``: ``key_rows <= MATMUL_KEYS_PER_NEGATIVE * num_negatives`` (see the module
    docstring); ``"matmul"`` / ``"gather"`` force a path.
    """
    if negative_path not in NEGATIVE_PATHS:
        raise ValueError(f"negative_path must be one of {NEGATIVE_PATHS}, got {negative_path!r}")
    if negative_path != "auto":
        return negative_path == "matmul"
    return key_rows <= MATMUL_KEYS_PER_NEGATIVE * num_negatives


def _chunked_negative_logits(
    queries: torch.Tensor,
    negative_index: torch.Tensor,
    key_table: torch.Tensor,
    temperature: float,
    max_key_elements: int,
    negative_path: str = "auto",
) -> torch.Tensor:
    """(R, D) unit queries, (R, NEG) key rows of ``key_table`` -> (R, NEG) cosine logits / τ.

    The matmul path (:func:`_matmul_negative_logits`) or the gather path: :func:`_negative_logits`
    over row chunks holding at most ``max_key_elements`` gathered key values. The number of
    chunks depends only on shapes, so the loop is static. With more than one gather chunk each
    is checkpointed: its gathered keys are freed after forward and re-gathered in backward
    (they are needed there for the query gradient).
    """
    dtype = queries.dtype
    key_inverse_norms = 1.0 / torch.linalg.vector_norm(key_table.to(dtype), dim=-1).clamp(
        min=torch.finfo(dtype).tiny ** 0.5
    )
    rows, num_negatives = negative_index.shape
    if use_matmul_path(key_table.shape[0], num_negatives, negative_path):
        return _matmul_negative_logits(queries, negative_index, key_table, key_inverse_norms,
                                       temperature, max_key_elements)
    rows_per_chunk = max(1, max_key_elements // max(1, num_negatives * key_table.shape[-1]))
    if rows_per_chunk >= rows:
        return _negative_logits(queries, negative_index, key_table, key_inverse_norms,
                                temperature)
    chunks = []
    for start in range(0, rows, rows_per_chunk):
        stop = min(rows, start + rows_per_chunk)
        chunks.append(checkpoint(
            _negative_logits, queries[start:stop], negative_index[start:stop], key_table,
            key_inverse_norms, temperature, use_reentrant=False,
        ))
    return torch.cat(chunks, dim=0)


def _gather_queries(rep: torch.Tensor, query_index: torch.Tensor) -> torch.Tensor:
    """Representations (with gradient) at flat pixel indices: (N, D, *S), (C, M) -> (C, M, D)."""
    num_images, dim = rep.shape[:2]
    per_image = rep.reshape(num_images, dim, -1)
    pixels_per_image = per_image.shape[-1]
    return per_image[query_index // pixels_per_image, :, query_index % pixels_per_image]


def _anatomical_contrast_from_samples(
    rep: torch.Tensor,
    prototypes: torch.Tensor,
    samples: ContrastSamples,
    key_table: torch.Tensor,
    temperature: float,
    max_key_elements: int = DEFAULT_MAX_KEY_ELEMENTS,
    negative_path: str = "auto",
) -> torch.Tensor:
    """The deterministic half of L_anco: InfoNCE given already drawn samples.

    Args:
        rep: (N, D, *S) representations with gradient.
        prototypes: (C, D) r̄_c (used as constants).
        samples: the draws of :func:`sample_contrast`.
        key_table: (rows, D) table that ``samples.negative_index`` points into.
    Returns:
        scalar tensor.
    """
    dtype = compute_dtype(rep)
    num_classes, num_queries = samples.query_index.shape
    queries = unit_vectors(_gather_queries(rep, samples.query_index).to(dtype))  # (C, M, D)
    positives = unit_vectors(prototypes.detach().to(dtype))  # (C, D)
    positive_logits = (queries * positives.unsqueeze(1)).sum(dim=-1) / temperature  # (C, M)
    negative_logits = _chunked_negative_logits(
        queries.reshape(num_classes * num_queries, -1),
        samples.negative_index.reshape(num_classes * num_queries, -1),
        key_table, temperature, max_key_elements, negative_path,
    ).reshape(num_classes, num_queries, -1)  # (C, M, NEG)
    all_logits = torch.cat([positive_logits.unsqueeze(-1), negative_logits], dim=-1)
    per_query = torch.logsumexp(all_logits, dim=-1) - positive_logits  # -log softmax[0]
    per_class = per_query.mean(dim=-1)  # (C,)
    used = torch.where(samples.class_used, per_class, torch.zeros_like(per_class))
    return used.sum() / samples.num_present.clamp(min=1).to(dtype)


def anatomical_contrast_loss(
    rep: torch.Tensor,
    labels_onehot: torch.Tensor,
    valid_mask: torch.Tensor,
    probs: torch.Tensor,
    strong_threshold: float = 0.97,
    temperature: float = 0.5,
    num_queries: int = 256,
    num_negatives: int = 512,
    generator: torch.Generator | None = None,
    negative_keys: ClassKeyBank | None = None,
    return_samples: bool = False,
    max_key_elements: int = DEFAULT_MAX_KEY_ELEMENTS,
    negative_path: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, ContrastSamples]:
    """L_anco of §4.4, fully vectorised on the device of ``rep``.

    Args:
        rep: (N, D, *S) pixel representations with gradient ([labeled; unlabeled] in FT).
        labels_onehot: (N, C, *S) one-hot (pseudo-)labels.
        valid_mask: (N, *S) 1 where a pixel may be used (1[confidence >= δ_w] for unlabeled).
        probs: (N, C, *S) student class probabilities (detached here).
        strong_threshold: δ_s; hard queries have P_c < δ_s.
        temperature: τ, in π and in the InfoNCE.
        num_queries: M per class.
        num_negatives: NEG per query.
        generator: torch.Generator on ``rep``'s device, for reproducible draws.
        negative_keys: draw negatives from this class-wise key bank instead of the batch
            (``anco_negatives=bank``); prototypes and π still come from the batch. Update the
            bank only after ``backward()``: when the negatives are chunked, backward re-reads
            the bank (an earlier in-place update raises PyTorch's in-place modification
            error rather than giving a wrong gradient).
        return_samples: also return the :class:`ContrastSamples` (tests, diagnostics).
        max_key_elements: most negative-key values gathered, or query·key logits held, at
            once (memory bound).
        negative_path: ``"auto"`` (by size), ``"matmul"`` or ``"gather"``: how the negative
            logits are computed (module docstring); the values agree to float rounding.
    Returns:
        scalar loss, or ``(loss, samples)`` with ``return_samples``.
    """
    check_rank_at_least("rep", rep, 3, "(N, D, *spatial)")
    num_images, spatial = rep.shape[0], rep.shape[2:]
    check_rank_at_least("labels_onehot", labels_onehot, 3, "(N, C, *spatial)")
    num_classes = labels_onehot.shape[1]
    check_same_shape("labels_onehot", labels_onehot.shape, "(N, C, *spatial) of rep",
                     (num_images, num_classes) + tuple(spatial))
    check_same_shape("probs", probs.shape, "labels_onehot", labels_onehot.shape)
    check_same_shape("valid_mask", valid_mask.shape, "(N, *spatial) of rep",
                     (num_images,) + tuple(spatial))
    check_positive("temperature", temperature)
    check_positive("num_queries", num_queries)
    check_positive("num_negatives", num_negatives)
    check_positive("max_key_elements", max_key_elements)
    use_matmul_path(1, 1, negative_path)  # validates the name
    if negative_keys is not None:
        keys, counts = negative_keys
        if keys.dim() != 3 or keys.shape[0] != num_classes or keys.shape[2] != rep.shape[1]:
            raise ValueError(
                f"negative_keys.keys must have shape (C={num_classes}, Kc, D={rep.shape[1]}), "
                f"got {tuple(keys.shape)}"
            )
        check_same_shape("negative_keys.counts", counts.shape, "(C,)", (num_classes,))

    dtype = compute_dtype(rep)
    anchors, hard = class_masks(labels_onehot, valid_mask, probs, strong_threshold)
    pixel_table = _key_table(rep, None)
    prototypes = _prototypes(anchors, pixel_table, dtype)
    samples = sample_contrast(anchors, hard, prototypes, temperature, num_queries,
                              num_negatives, generator, negative_keys)
    key_table = pixel_table if negative_keys is None else _key_table(rep, negative_keys)
    loss = _anatomical_contrast_from_samples(rep, prototypes, samples, key_table, temperature,
                                             max_key_elements, negative_path)
    return (loss, samples) if return_samples else loss
