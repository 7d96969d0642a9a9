"""Independent naive float64 references for the metric losses (loops, no TF).

Written from the papers' / tensorflow-addons' stated semantics (each function's
docstring states them), not from tfsim's code, so that tests comparing the
two can fail.
"""

from __future__ import annotations

import numpy as np


def distance_matrix(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    n = len(x)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            if metric == "L2":
                d[i, j] = np.sqrt(np.sum((x[i] - x[j]) ** 2))
            elif metric == "squared-L2":
                d[i, j] = np.sum((x[i] - x[j]) ** 2)
            elif metric == "angular":
                cos = x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
                d[i, j] = max(1.0 - cos, 0.0)
            else:
                raise ValueError(metric)
    return d


def triplet_semihard(labels, x, margin=1.0, metric="L2", anchors=None) -> float:
    """`anchors`: only rows < anchors are anchors (the rest are references: a cross-batch memory)."""
    labels = np.asarray(labels).reshape(-1)
    d = distance_matrix(x, metric) if isinstance(metric, str) else np.asarray(metric, np.float64)
    n = len(labels)
    total, count = 0.0, 0
    for a in range(n if anchors is None else anchors):
        negs = [k for k in range(n) if labels[k] != labels[a]]
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            count += 1
            farther = [d[a, k] for k in negs if d[a, k] > d[a, p]]
            if farther:
                dn = min(farther)
            elif negs:
                dn = max(d[a, k] for k in negs)
            else:
                dn = min(d[a, k] for k in range(n))  # tfa: row minimum when no negative
            total += max(d[a, p] - dn + margin, 0.0)
    return total / count if count else 0.0


def triplet_hard(labels, x, margin=1.0, soft=False, metric="L2", anchors=None) -> float:
    """`anchors`: as in `triplet_semihard`."""
    labels = np.asarray(labels).reshape(-1)
    d = distance_matrix(x, metric) if isinstance(metric, str) else np.asarray(metric, np.float64)
    n = len(labels)
    losses = []
    for a in range(n if anchors is None else anchors):
        pos = [d[a, p] for p in range(n) if p != a and labels[p] == labels[a]]
        neg = [d[a, k] for k in range(n) if labels[k] != labels[a]]
        hp = max(pos) if pos else min(d[a])  # tfa: row minimum without positives
        hn = min(neg) if neg else max(d[a])  # tfa: row maximum without negatives
        losses.append(np.log1p(np.exp(hp - hn)) if soft else max(hp - hn + margin, 0.0))
    return float(np.mean(losses))


def lifted_struct(labels, x, margin=1.0, anchors=None) -> float:
    """Over unordered positive pairs; with `anchors`, over the ordered pairs (i, j) of the first
    `anchors` rows i (each pair's J still sums both ends' negatives over every row): the same
    value when every row is an anchor, since J_ij = J_ji."""
    labels = np.asarray(labels).reshape(-1)
    d = distance_matrix(x, "L2")
    n = len(labels)
    total, pairs = 0.0, 0
    for i in range(n if anchors is None else anchors):
        for j in range(i + 1 if anchors is None else 0, n):
            if labels[i] != labels[j] or i == j:
                continue
            pairs += 1
            s = sum(np.exp(margin - d[i, k]) for k in range(n) if labels[k] != labels[i])
            s += sum(np.exp(margin - d[j, k]) for k in range(n) if labels[k] != labels[j])
            if s > 0:
                total += max(np.log(s) + d[i, j], 0.0) ** 2
    return total / (2 * pairs) if pairs else 0.0


def multi_similarity(labels, x, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, anchors=None) -> float:
    """Per anchor, as in the authors' code: skip anchors without positives/negatives before or after mining.
    `anchors`: as in `triplet_semihard` (the mean is over the anchors)."""
    labels = np.asarray(labels).reshape(-1)
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T
    n = len(labels)
    total = 0.0
    for i in range(n if anchors is None else anchors):
        pos = [s[i, j] for j in range(n) if j != i and labels[j] == labels[i]]
        neg = [s[i, k] for k in range(n) if labels[k] != labels[i]]
        if not pos or not neg:
            continue
        pos_kept = [p for p in pos if p - epsilon < max(neg)]
        neg_kept = [q for q in neg if q + epsilon > min(pos)]
        if not pos_kept or not neg_kept:
            continue
        total += np.log1p(sum(np.exp(-alpha * (p - base)) for p in pos_kept)) / alpha
        total += np.log1p(sum(np.exp(beta * (q - base)) for q in neg_kept)) / beta
    return total / (n if anchors is None else anchors)


def contrastive(labels, x, pos_margin=0.0, neg_margin=1.0, metric="L2", anchors=None) -> float:
    """`anchors`: only the pairs (i, j) of the first `anchors` rows i."""
    labels = np.asarray(labels).reshape(-1)
    d = distance_matrix(x, metric)
    n = len(labels)
    a = n if anchors is None else anchors
    pull = [0.5 * max(d[i, j] - pos_margin, 0.0) ** 2 for i in range(a) for j in range(n)
            if i != j and labels[i] == labels[j]]
    push = [0.5 * max(neg_margin - d[i, j], 0.0) ** 2 for i in range(a) for j in range(n)
            if labels[i] != labels[j]]
    return (np.mean(pull) if pull else 0.0) + (np.mean(push) if push else 0.0)


def binomial_deviance(labels, x, alpha=2.0, beta=0.5, cost=25.0, anchors=None) -> float:
    """`anchors`: only the pairs (i, j) of the first `anchors` rows i."""
    labels = np.asarray(labels).reshape(-1)
    x = np.asarray(x, np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(labels)
    a = n if anchors is None else anchors
    pos = [np.log1p(np.exp(-alpha * (x[i] @ x[j] - beta))) for i in range(a) for j in range(n)
           if i != j and labels[i] == labels[j]]
    neg = [np.log1p(np.exp(alpha * cost * (x[i] @ x[j] - beta))) for i in range(a) for j in range(n)
           if labels[i] != labels[j]]
    return (np.mean(pos) if pos else 0.0) + (np.mean(neg) if neg else 0.0)


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def _logsumexp(values) -> float:
    values = np.asarray(values, np.float64)
    top = values.max()
    return float(top + np.log(np.sum(np.exp(values - top))))


def normalized_softmax(labels, x, proxies, temperature=0.05) -> float:
    """Mean over samples of -log softmax(cos(x_i, w_c) / T)[y_i], from the embeddings and proxies."""
    total = 0.0
    for xi, yi in zip(x, np.asarray(labels).reshape(-1)):
        logits = [float(_unit(xi) @ _unit(w)) / temperature for w in proxies]
        total += _logsumexp(logits) - logits[yi]
    return total / len(x)


def proxy_nca(labels, x, proxies, scale=1.0) -> float:
    """Mean over samples of -log(exp(-d(x, p_y)) / sum_{z != y} exp(-d(x, p_z))), d = squared L2 of unit vectors."""
    total = 0.0
    for xi, yi in zip(x, np.asarray(labels).reshape(-1)):
        d = [scale * float(np.sum((_unit(xi) - _unit(w)) ** 2)) for w in proxies]
        total += d[yi] + _logsumexp([-d[z] for z in range(len(proxies)) if z != yi])
    return total / len(x)


def nca(labels, x, scale=1.0) -> float:
    """Mean over anchors with a positive of -log sum_{j same class} p_ij, p_ij softmax over j != i of -scale d^2."""
    labels = np.asarray(labels).reshape(-1)
    d = distance_matrix(x, "squared-L2")
    n, total, count = len(labels), 0.0, 0
    for i in range(n):
        pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
        if not pos:
            continue
        denom = sum(np.exp(-scale * d[i, k]) for k in range(n) if k != i)
        total += -np.log(sum(np.exp(-scale * d[i, j]) for j in pos) / denom)
        count += 1
    return total / count if count else 0.0


def triplet_margin(x, margin=1.0, squared=True) -> float:
    """Mean over rows (q, p, n), (q', p', n'), ... of max(0, g + D(q, p) - D(q, n)),
    D = |.|^2 (Wang et al. 2014, Eq. 1) or |.| with squared=False."""
    x = np.asarray(x, np.float64)
    power = 2 if squared else 1
    hinges = [max(0.0, margin + np.linalg.norm(x[t] - x[t + 1]) ** power - np.linalg.norm(x[t] - x[t + 2]) ** power)
              for t in range(0, len(x), 3)]
    return float(np.mean(hinges)) if hinges else 0.0


def circle_per_anchor(labels, x, gamma=80.0, margin=0.4) -> np.ndarray:
    """Circle loss (Sun et al., CVPR 2020, arXiv:2002.10857) per anchor, on cosine similarities s:
    log(1 + sum_n exp(gamma a_n (s_n - m)) * sum_p exp(-gamma a_p (s_p - 1 + m))),
    a_p = max(1 + m - s_p, 0), a_n = max(s_n + m, 0); positives exclude the anchor itself."""
    labels = np.asarray(labels).reshape(-1)
    x = np.asarray(x, np.float64)
    out = np.zeros(len(x))
    for i in range(len(x)):
        pos, neg = [], []
        for j in range(len(x)):
            s = float(x[i] @ x[j])  # Keras's circle takes unit vectors as they are
            if labels[j] == labels[i] and j != i:
                pos.append(-gamma * max(1 + margin - s, 0.0) * (s - 1 + margin))
            elif labels[j] != labels[i]:
                neg.append(gamma * max(s + margin, 0.0) * (s - margin))
        if pos and neg:
            out[i] = np.log1p(np.exp(_logsumexp(pos) + _logsumexp(neg)))
    return out
