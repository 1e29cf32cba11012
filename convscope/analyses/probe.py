"""How well each layer's features generalize: the paper's Tables 4, 5 and 7.

A frozen model's layers are turned into fixed-length feature vectors; a softmax classifier
(multinomial logistic regression) and a linear SVM are trained on `n` images per class and
tested on all the other images; the score is the mean per-class accuracy (balanced accuracy),
with its mean and standard deviation over several random splits ("folds").

Pooling to a fixed length (`pool`): a layer with spatial extent (N x C x h x w) is
average-pooled over a g x g grid of cells (adaptive average pooling) and flattened:
- "auto" (default): the largest g in (4, 2, 1) with C * g * g <= 4096 features;
- "avg": g = 1 (global average); "max": global maximum; "gN": an N x N grid.
A layer without spatial extent (fc6, fc7: N x D) is used as it is. Before the classifiers
each feature is standardized with the training images' mean and deviation.

Splits: each class is shuffled (seeded) and cut into blocks of n images; fold f trains on
one block per class and tests on all the other images of the class; when the blocks run out
the class is shuffled again. So train and test never overlap, every class gives exactly n
training images, and the training sets of different folds are disjoint while folds * n does
not exceed the class size.

Features are extracted once per (model, data, pooling) and cached per layer as a `.npy` file
read memory-mapped, so another classifier or another n costs no forward pass.

Transfer (Tables 4-5): a new softmax on the frozen network's last hidden layer, against the
same architecture re-initialized and trained from scratch on the same n images per class.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from convscope.core.capture import capture
from convscope.core.layers import LayerRef, resolve_layer
from convscope.data.images import IMAGE_SUFFIXES, load_image, preprocess
from convscope.errors import ConvscopeError
from convscope.models.info import info_of

log = logging.getLogger(__name__)

CLASSIFIERS = ("softmax", "svm")
FEATURE_BUDGET = 4096
SPLIT_NAMES = ("train", "training", "test", "val", "valid", "validation")


# ---- data ----------------------------------------------------------------------------------


@dataclass
class LabelledImages:
    """Images (files, or H x W x 3 uint8 arrays) with integer labels."""

    items: list[Path | np.ndarray]
    labels: np.ndarray
    classes: list[str]
    source: str  # a description that identifies the set (part of the feature cache's key)

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def image(self, i: int):
        from PIL import Image

        item = self.items[i]
        return load_image(item) if isinstance(item, Path) else Image.fromarray(item)


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def image_folder(
    root: str | Path, per_class: int | None = None, seed: int = 0, split: str = "train"
) -> LabelledImages:
    """`root/<class>/*.jpg` (or `root/<split>/<class>/...`), `per_class` seeded picks each."""
    root = Path(root)
    if not root.is_dir():
        raise ConvscopeError(f"--data {root} is not a folder (expected one subfolder per class)")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    if subdirs and all(d.name.lower() in SPLIT_NAMES for d in subdirs):
        chosen = root / split
        if not chosen.is_dir():
            names = ", ".join(d.name for d in subdirs)
            raise ConvscopeError(f"{root} holds the splits {names} but no {split!r}")
        log.info("using the %s split of %s", split, root)
        root, subdirs = chosen, sorted(d for d in chosen.iterdir() if d.is_dir())
    classes = [d for d in subdirs if any(_images_in(d))]
    if len(classes) < 2:
        raise ConvscopeError(
            f"{root} needs at least two class subfolders with images; found {len(classes)}"
        )
    items: list[Path | np.ndarray] = []
    labels: list[int] = []
    rng = random.Random(seed)
    for label, d in enumerate(classes):
        files = _images_in(d)
        if per_class is not None:
            if len(files) < per_class:
                raise ConvscopeError(
                    f"asked for {per_class} images per class but class {d.name!r} has only "
                    f"{len(files)}; use --images-per-class {len(files)} or fewer"
                )
            files = sorted(rng.sample(files, per_class))
        items += files
        labels += [label] * len(files)
    source = f"folder:{root.resolve()}:per_class={per_class}:seed={seed}"
    return LabelledImages(items, np.array(labels), [d.name for d in classes], source)


def sklearn_digits(per_class: int | None = None, seed: int = 0, side: int = 32) -> LabelledImages:
    """scikit-learn's bundled 8x8 handwritten digits, upscaled to `side` pixels, as RGB."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ConvscopeError("the digits set needs scikit-learn: pip install scikit-learn") from e
    d = load_digits()
    rng = np.random.default_rng(seed)
    keep = []
    for c in range(10):
        idx = np.flatnonzero(d.target == c)
        if per_class is not None:
            if len(idx) < per_class:
                raise ConvscopeError(
                    f"asked for {per_class} digits per class but class {c} has only {len(idx)}"
                )
            idx = np.sort(rng.choice(idx, per_class, replace=False))
        keep += idx.tolist()
    zoom = side // 8
    items: list[Path | np.ndarray] = []
    for i in keep:
        grey = (255 - d.images[i] * (255 / 16)).astype(np.uint8)  # dark ink on white
        big = np.kron(grey, np.ones((zoom, zoom), np.uint8))
        items.append(np.repeat(big[:, :, None], 3, axis=2))
    labels = d.target[keep].astype(int)
    return LabelledImages(
        items, labels, [str(c) for c in range(10)], f"digits:{per_class}:{seed}:{side}"
    )


def labelled_images(
    spec: str | Path, per_class: int | None = None, seed: int = 0
) -> LabelledImages:
    """`sklearn:digits` (the bundled handwritten digits) or an image folder."""
    if str(spec).startswith("sklearn:digits"):
        return sklearn_digits(per_class, seed)
    return image_folder(spec, per_class, seed)


def load_inputs(model: nn.Module, data: LabelledImages, size: int | None = None) -> Tensor:
    """All images preprocessed for `model` (optionally at another crop size)."""
    pre = info_of(model).preprocess
    if size is not None and size != pre.crop:
        from dataclasses import replace

        pre = replace(pre, resize=round(size * pre.resize / pre.crop), crop=size)
    return torch.stack([preprocess(data.image(i), pre) for i in range(len(data))])


# ---- features ------------------------------------------------------------------------------


def check_pool(pool: str) -> str:
    if pool in ("auto", "avg", "max") or (
        pool[:1] == "g" and pool[1:].isdigit() and pool[1:] != "0"
    ):
        return pool
    raise ConvscopeError(f"unknown pooling {pool!r}; use auto, avg, max or gN (e.g. g2)")


def pool_features(act: Tensor, pool: str = "auto") -> Tensor:
    """N x D features from a layer's output; see the module docstring for `pool`."""
    if act.dim() == 2:
        return act
    if act.dim() != 4:
        return act.flatten(1)
    C = act.shape[1]
    if pool == "max":
        return act.amax((2, 3))
    if pool == "avg":
        g = 1
    elif pool == "auto":
        g = next(g for g in (4, 2, 1) if C * g * g <= FEATURE_BUDGET or g == 1)
    else:
        g = int(pool[1:])
    g = min(g, act.shape[2], act.shape[3])
    return F.adaptive_avg_pool2d(act, g).flatten(1)


def model_fingerprint(model: nn.Module) -> str:
    h = hashlib.sha1(info_of(model).name.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _forward_features(
    model: nn.Module, x: Tensor, refs: Sequence[LayerRef], pool: str
) -> dict[str, Tensor]:
    """Pooled features of each layer, from one forward pass stopped after the last one."""
    return capture(model, x, refs, transform=lambda t: pool_features(t.float(), pool), stop=True)[1]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def extract_features(
    model: nn.Module,
    data: LabelledImages,
    layers: Sequence[str],
    cache: Path,
    pool: str = "auto",
    batch: int = 32,
    size: int | None = None,
) -> dict[str, np.ndarray]:
    """Features of every layer, memory-mapped from `cache`; only missing layers are computed.

    `size` feeds the images at another crop size than the model's own (fully convolutional
    models only)."""
    check_pool(pool)
    refs = [resolve_layer(model, name) for name in layers]
    key = {
        "model": info_of(model).name,
        "fingerprint": model_fingerprint(model),
        "data": data.source,
        "n": len(data),
        "preprocess": info_of(model).preprocess.describe(),
        "pool": pool,
        "size": size,
    }
    cache.mkdir(parents=True, exist_ok=True)
    index_path = cache / "index.json"
    index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    if index.get("key") != key:
        index = {"key": key, "layers": {}}
    missing = [r for r in refs if str(r) not in index["layers"]]
    if missing:
        log.info("extracting %s for %d images", ", ".join(map(str, missing)), len(data))
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        parts: dict[str, list[np.ndarray]] = {str(r): [] for r in missing}
        try:
            for s in range(0, len(data), batch):
                x = load_inputs(model, _subset(data, range(s, min(s + batch, len(data)))), size)
                for k, v in _forward_features(model, x, missing, pool).items():
                    parts[k].append(v.numpy().astype(np.float32))
        finally:
            model.train(was_training)
        for name, chunks in parts.items():
            file = f"{_safe(name)}.npy"
            np.save(cache / file, np.concatenate(chunks))
            index["layers"][name] = {"file": file, "dim": int(chunks[0].shape[1])}
        index["seconds"] = round(time.perf_counter() - start, 1)
        np.save(cache / "labels.npy", data.labels)
        index_path.write_text(json.dumps(index, indent=2))
    return {str(r): np.load(cache / index["layers"][str(r)]["file"], mmap_mode="r") for r in refs}


def _subset(data: LabelledImages, idx) -> LabelledImages:
    idx = list(idx)
    return LabelledImages([data.items[i] for i in idx], data.labels[idx], data.classes, data.source)


# ---- splits and classifiers ----------------------------------------------------------------


def splits(
    labels: np.ndarray, n: int, folds: int, seed: int = 0, classes: Sequence[str] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index arrays per fold: n per class to train, the rest to test."""
    if n < 1:
        raise ConvscopeError(f"images per class must be at least 1, got {n}")
    if folds < 1:
        raise ConvscopeError(f"--folds must be at least 1, got {folds}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    per_class = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= n:
            name = classes[int(c)] if classes is not None else str(int(c))
            raise ConvscopeError(
                f"asked for {n} training images per class but class {name!r} has only "
                f"{len(idx)} (n must leave at least one test image); use --per-class "
                f"{len(idx) - 1} or fewer"
            )
        per_class.append(idx)
    # Each class is cut into len // n disjoint blocks of n; once they are used up, the class
    # is shuffled again (seeded), so every fold differs from the others.
    orders: dict[tuple[int, int], np.ndarray] = {}
    out = []
    for f in range(folds):
        train, test = [], []
        for c, idx in enumerate(per_class):
            blocks = len(idx) // n
            round_, block = divmod(f, blocks)
            if (c, round_) not in orders:
                orders[(c, round_)] = rng.permutation(idx)
            order = orders[(c, round_)]
            train.append(order[block * n : (block + 1) * n])
            test.append(np.setdiff1d(idx, train[-1]))
        out.append((np.sort(np.concatenate(train)), np.sort(np.concatenate(test))))
    return out


def make_classifier(kind: str, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if kind == "softmax":
        clf = LogisticRegression(C=1.0, max_iter=2000)
    elif kind == "svm":
        clf = LinearSVC(C=1.0, max_iter=10000, random_state=seed)
    else:
        raise ConvscopeError(f"unknown classifier {kind!r}; use one of {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), clf)


def mean_class_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    classes = np.unique(y_true)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def evaluate(
    features: np.ndarray,
    labels: np.ndarray,
    fold_splits: list[tuple[np.ndarray, np.ndarray]],
    kind: str = "softmax",
    seed: int = 0,
) -> list[float]:
    """Mean per-class test accuracy of a `kind` classifier, one per fold."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    scores = []
    for train, test in fold_splits:
        clf = make_classifier(kind, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(np.asarray(features[train]), labels[train])
        scores.append(mean_class_accuracy(labels[test], clf.predict(np.asarray(features[test]))))
    return scores


# ---- results -------------------------------------------------------------------------------


@dataclass
class ProbeRow:
    layer: str
    classifier: str  # softmax, svm, or "scratch" (transfer baseline)
    n: int
    dim: int
    mean: float
    std: float
    folds: list[float]


@dataclass
class ProbeResult:
    """Accuracy per layer, classifier and n; saves to / loads from a folder."""

    model: str
    data: str
    classes: list[str]
    images: int
    pool: str
    layers: list[str]
    rows: list[ProbeRow] = field(default_factory=list)
    transfer: list[ProbeRow] = field(default_factory=list)  # pretrained vs scratch
    notes: list[str] = field(default_factory=list)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "probe.json").write_text(json.dumps(asdict(self), indent=2))
        self.write_csv(folder / "probe.csv", self.rows)
        if self.transfer:
            self.write_csv(folder / "transfer.csv", self.transfer)
        if self.rows:
            self.plot(folder / "probe.png")

    @staticmethod
    def write_csv(path: Path, rows: list[ProbeRow]) -> None:
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer", "classifier", "n_per_class", "dim", "accuracy", "std", "folds"])
            for r in rows:
                w.writerow(
                    [
                        r.layer,
                        r.classifier,
                        r.n,
                        r.dim,
                        f"{r.mean:.4f}",
                        f"{r.std:.4f}",
                        len(r.folds),
                    ]
                )

    @classmethod
    def load(cls, folder: Path) -> ProbeResult:
        path = Path(folder) / "probe.json"
        if not path.is_file():
            raise ConvscopeError(f"{folder} holds no probe.json; run `convscope probe` first")
        raw = json.loads(path.read_text())
        raw["rows"] = [ProbeRow(**r) for r in raw.get("rows", [])]
        raw["transfer"] = [ProbeRow(**r) for r in raw.get("transfer", [])]
        return cls(**raw)

    def table(self) -> str:
        """Markdown: one row per layer, one column per classifier and n."""
        cols = sorted({(r.classifier, r.n) for r in self.rows}, key=lambda t: (t[0], t[1]))
        head = "| layer | dim | " + " | ".join(f"{c} n={n}" for c, n in cols) + " |"
        lines = [head, "|" + "---|" * (len(cols) + 2)]
        for layer in self.layers:
            cells = []
            dim = next((r.dim for r in self.rows if r.layer == layer), 0)
            for c, n in cols:
                r = next(
                    (r for r in self.rows if (r.layer, r.classifier, r.n) == (layer, c, n)), None
                )
                cells.append(f"{100 * r.mean:.1f} ± {100 * r.std:.1f}" if r else "")
            lines.append(f"| {layer} | {dim} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def plot(self, path: Path) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(self.layers) + 2), 4))
        x = np.arange(len(self.layers))
        for c, n in sorted({(r.classifier, r.n) for r in self.rows}):
            rows = {r.layer: r for r in self.rows if (r.classifier, r.n) == (c, n)}
            ys = [rows[lay].mean if lay in rows else np.nan for lay in self.layers]
            es = [rows[lay].std if lay in rows else 0 for lay in self.layers]
            ax.errorbar(x, ys, yerr=es, marker="o", capsize=3, label=f"{c}, {n}/class")
        ax.axhline(1 / len(self.classes), color="0.6", ls=":", label="chance")
        ax.set_xticks(x, self.layers, rotation=30)
        ax.set_ylabel("mean per-class accuracy")
        ax.set_ylim(0, 1)
        ax.set_title(f"{self.model} on {data_name(self.data)}: accuracy against depth")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def data_name(source: str) -> str:
    """A short name for a data set's `source` string (`cifar10/train`, `digits`)."""
    kind, _, rest = source.partition(":")
    if kind == "folder":
        path = Path(rest.split(":per_class=")[0])
        return f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    return kind


def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConvscopeError(f"{what} is empty; give a comma-separated list")
    return items


def parse_ints(text: str, what: str) -> list[int]:
    try:
        return [int(t) for t in parse_list(text, what)]
    except ValueError as e:
        raise ConvscopeError(f"{what} must be integers like 15,30; got {text!r}") from e


def default_layers(model: nn.Module) -> list[str]:
    aliases = info_of(model).aliases
    paper = [a for a in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7") if a in aliases]
    if paper:
        return paper
    blocks = [
        a
        for a in (
            "stem",
            "block1",
            "block3",
            "block5",
            "block8",
            "block11",
            "block15",
            "head",
            "pool",
        )
        if a in aliases
    ]
    if blocks:
        return blocks
    raise ConvscopeError(f"{info_of(model).name} has no layer aliases; pass --layers")


def probe(
    model: nn.Module,
    data: LabelledImages,
    layers: Sequence[str],
    per_class: Sequence[int],
    folds: int = 5,
    classifiers: Sequence[str] = CLASSIFIERS,
    cache: Path | None = None,
    pool: str = "auto",
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    size: int | None = None,
) -> ProbeResult:
    """The paper's Table 7 for `model` on `data`."""
    for c in classifiers:
        if c not in CLASSIFIERS:
            raise ConvscopeError(f"unknown classifier {c!r}; use one of {', '.join(CLASSIFIERS)}")
    fold_splits = {n: splits(data.labels, n, folds, seed, data.classes) for n in per_class}
    if cache is None:
        import tempfile

        cache = Path(tempfile.mkdtemp(prefix="convscope-probe-"))
    feats = extract_features(model, data, layers, cache, pool, size=size)
    result = ProbeResult(
        info_of(model).name, data.source, data.classes, len(data), pool, list(feats)
    )
    for layer, x in feats.items():
        for kind in classifiers:
            for n in per_class:
                scores = evaluate(x, data.labels, fold_splits[n], kind, seed)
                row = ProbeRow(
                    layer,
                    kind,
                    n,
                    int(x.shape[1]),
                    float(np.mean(scores)),
                    float(np.std(scores)),
                    scores,
                )
                result.rows.append(row)
                if progress:
                    progress(f"{layer} {kind} n={n}: {row.mean:.3f} ± {row.std:.3f}")
    return result


# ---- transfer: frozen features against training from scratch ------------------------------


def default_transfer_layer(model: nn.Module) -> str:
    aliases = info_of(model).aliases
    for name in ("fc7", "pool"):
        if name in aliases:
            return name
    raise ConvscopeError(
        f"{info_of(model).name} has no fc7 or pool alias; pass --transfer-layer (its last "
        "hidden layer)"
    )


def fresh_copy(model: nn.Module, num_classes: int) -> nn.Module:
    """The same architecture, every parameter re-initialized, with a `num_classes` output."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ConvscopeError("training from scratch needs a Python module, not TorchScript")
    net = copy.deepcopy(model)
    for m in net.modules():
        if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
            m.reset_parameters()
    aliases = info_of(net).aliases
    name = aliases.get("logits")
    modules = dict(net.named_modules())
    if name not in modules or not isinstance(modules[name], nn.Linear):
        linears = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConvscopeError("the model has no final linear layer to replace")
        name = linears[-1]
    old = modules[name]
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, num_classes))
    return net


def train_from_scratch(
    model: nn.Module,
    x: Tensor,
    y: np.ndarray,
    num_classes: int,
    epochs: int = 30,
    lr: float = 1e-3,
    batch: int = 32,
    seed: int = 0,
) -> nn.Module:
    """A re-initialized copy of `model` trained on (x, y) with AdamW and horizontal flips."""
    torch.manual_seed(seed)
    net = fresh_copy(model, num_classes)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    labels = torch.as_tensor(y, dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            if len(idx) < 2:
                continue
            xb = x[idx]
            flip = torch.rand(len(idx), generator=g) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.cross_entropy(net(xb), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    recalibrate_batchnorm(net, x, batch)
    return net.eval()


@torch.no_grad()
def recalibrate_batchnorm(net: nn.Module, x: Tensor, batch: int = 32) -> None:
    """Set BatchNorm running statistics to the exact averages over `x`.

    A short run on a few images leaves them far from the data when the momentum is small
    (EfficientNet's is 0.01): in eval mode the network would then predict one class.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    net.train()
    for s in range(0, len(x), batch):
        net(x[s : s + batch])
    for m, momentum in zip(norms, saved):
        m.momentum = momentum


@torch.no_grad()
def predict(net: nn.Module, x: Tensor, batch: int = 64) -> np.ndarray:
    return torch.cat([net(x[s : s + batch]).argmax(1) for s in range(0, len(x), batch)]).numpy()


def transfer_vs_scratch(
    model: nn.Module,
    data: LabelledImages,
    per_class: Sequence[int],
    folds: int = 5,
    scratch_folds: int = 2,
    layer: str | None = None,
    cache: Path | None = None,
    pool: str = "auto",
    epochs: int = 30,
    size: int | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    feature_size: int | None = None,
) -> list[ProbeRow]:
    """Tables 4-5: softmax on the frozen last hidden layer vs. the same net from scratch."""
    layer = layer or default_transfer_layer(model)
    if cache is None:
        import tempfile

        cache = Path(tempfile.mkdtemp(prefix="convscope-probe-"))
    feats = extract_features(model, data, [layer], cache, pool, size=feature_size)
    x_feat = next(iter(feats.values()))
    rows = []
    x_img: Tensor | None = None
    for n in per_class:
        fs = splits(data.labels, n, folds, seed, data.classes)
        scores = evaluate(x_feat, data.labels, fs, "softmax", seed)
        rows.append(
            ProbeRow(
                f"{layer} (pretrained, frozen)",
                "softmax",
                n,
                int(x_feat.shape[1]),
                float(np.mean(scores)),
                float(np.std(scores)),
                scores,
            )
        )
        if scratch_folds < 1:
            continue
        if x_img is None:
            x_img = load_inputs(model, data, size)
        scratch = []
        for f, (train, test) in enumerate(fs[:scratch_folds]):
            start = time.perf_counter()
            net = train_from_scratch(
                model, x_img[train], data.labels[train], len(data.classes), epochs, seed=seed + f
            )
            scratch.append(mean_class_accuracy(data.labels[test], predict(net, x_img[test])))
            log.info(
                "scratch n=%d fold %d: %.3f (%.0f s)",
                n,
                f,
                scratch[-1],
                time.perf_counter() - start,
            )
        rows.append(
            ProbeRow(
                f"whole network from scratch ({epochs} epochs, {x_img.shape[-1]} px)",
                "scratch",
                n,
                0,
                float(np.mean(scratch)),
                float(np.std(scratch)),
                scratch,
            )
        )
        if progress:
            progress(f"transfer n={n}: frozen {rows[-2].mean:.3f} vs scratch {rows[-1].mean:.3f}")
    return rows
